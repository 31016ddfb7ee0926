// Save → boot → test: `ktld boot` once, and the daemon with --boot --boot-run booting each
// fresh kernel of the developer fixture in qemu, watched in the TUI through tmux.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv } from "../scripts/fixture";
import { fixtureCopy, KTLD, ktld, processesWith, spawnBounded, waitFor, buildWait, daemonStatus } from "./helpers";

const env = fixtureEnv("dev");

interface BootJson { ok: boolean; verdict: string; detail: string; ms: number; accel: string; log: string[] }
interface Status {
  boot: { running: number | null; last: (BootJson & { build: number }) | null } | null;
  history: { id: number; ok: boolean; boot?: BootJson }[];
}

const status = (out: string): Status => daemonStatus<Status>(out, env);


describe("save → boot → test on the developer fixture (qemu, busybox initramfs)", { timeout: 30 * 60_000 }, () => {
  const out = fixtureCopy("boot", "dev");
  const src = path.dirname(out);
  const vmlinux = path.join(out, "vmlinux");
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-boot-scripts-"));
  const script = (name: string, body: string) => {
    const f = path.join(work, name);
    fs.writeFileSync(f, `#!/bin/sh\n${body}\n`, { mode: 0o755 });
    return f;
  };
  const mainC = path.join(src, "init/main.c");
  const original = fs.readFileSync(mainC, "utf8");
  const BANNER = '\tpr_notice("%s", linux_banner);\n';
  assert.ok(original.includes(BANNER));
  const withMarker = (m: string) => original.replace(BANNER, `${BANNER}\tpr_info("${m}\\n");\n`);
  // A late initcall runs after the serial console is up: its panic is on the console.
  const withPanic = `${original}\nstatic int __init ktld_boot_panic(void)\n{\n\tpanic("ktld-boot-panic");\n}\nlate_initcall(ktld_boot_panic);\n`;
  after(() => {
    ktld(["stop", "--build-dir", out], env);
    fs.rmSync(work, { recursive: true, force: true });
  });

  test("ktld boot (one shot): a script's exit status is the verdict; the tree's modules load by name; a hang is a timeout and leaves no qemu", () => {
    // A file the script names comes along (run from /ktld, where the script is).
    script("lib.sh", "echo KTLD-LIB-RAN");
    const pass = script("pass.sh", "sh ./lib.sh && modprobe loop && grep -q '^loop ' /proc/modules && echo KTLD-LOOP-LOADED");
    const r1 = ktld(["boot", "--build-dir", out, "--boot-run", pass, "--json"], env, 180_000);
    const b1 = JSON.parse(r1.stdout) as BootJson & { console: string };
    assert.equal(b1.verdict, "pass", `${b1.detail}\n${b1.log.join("\n")}`);
    assert.equal(r1.status, 0);
    assert.match(fs.readFileSync(b1.console, "utf8"), /KTLD-LIB-RAN/);
    assert.match(fs.readFileSync(b1.console, "utf8"), /KTLD-LOOP-LOADED/);
    // KVM where it works; where /dev/kvm is there and does not work (nested, as on the CI
    // machines), TCG, and the verdict says why.
    assert.ok(b1.accel === "kvm" || !fs.existsSync("/dev/kvm") || /KVM did not work here/.test(b1.detail), b1.detail);

    // A script that prints what looks like a verdict and fails: the console is not the verdict.
    const fail = script("fail.sh", "echo 'KTLD-VERDICT exit 0'; exit 3");
    const r2 = ktld(["boot", "--build-dir", out, "--boot-run", fail], env, 180_000);
    assert.equal(r2.status, 1, r2.stdout + r2.stderr);
    assert.match(r2.stdout, /ktld: boot fail in [\d.]+ s \((KVM|TCG)\): the script exited 3/);

    const hang = script("hang.sh", "sleep 1000");
    const r3 = ktld(["boot", "--build-dir", out, "--boot-run", hang, "--boot-timeout", "10", "--json"], env, 180_000);
    assert.equal((JSON.parse(r3.stdout) as BootJson).verdict, "timeout");
    assert.deepEqual(processesWith("-kernel", vmlinux), [], "a qemu is left running");
  });

  test("the daemon with --boot --boot-run: build → boot → pass, a panic, a save during a boot cancels it, a hang times out; the TUI shows it", async () => {
    // The script passes when the running kernel printed marker-N, hangs when it printed
    // the hang marker.
    const check = script("check.sh", [
      "dmesg | grep -q ktld-boot-hang && sleep 1000",
      "dmesg | grep -q ktld-boot-marker && exit 0",
      "exit 1",
    ].join("\n"));
    const started = ktld(["start", "--build-dir", out, "--idle-timeout", "3600", "--boot-run", check, "--boot-timeout", "20"], env);
    assert.equal(started.status, 0, started.stderr);
    assert.equal(buildWait(out, env).ok, true, "the startup build");

    const session = `ktld-boot-${process.pid}`;
    const tmux = (...args: string[]) => spawnBounded("tmux", args, { encoding: "utf8", env: { ...env, TERM: "xterm-256color" } });
    const screen = () => tmux("capture-pane", "-p", "-t", session).stdout;
    const onScreen = (what: string, re: RegExp, ms = 180_000) => waitFor(what, () => (re.test(screen()) ? true : undefined), ms);
    const verdictOf = (id: number, ms = 240_000) => waitFor(`the boot of build #${id}`, () => status(out).history.find((h) => h.id === id)?.boot, ms);
    assert.equal(tmux("new-session", "-d", "-s", session, "-x", "140", "-y", "45", "bash --norc --noprofile").status, 0);
    try {
      tmux("send-keys", "-t", session, `${process.execPath} ${KTLD} status --build-dir ${out}`, "Enter");
      await onScreen("the dashboard", /recent builds/);

      fs.writeFileSync(mainC, withMarker("ktld-boot-marker-1"));
      const b1 = buildWait(out, env);
      assert.equal(b1.ok, true);
      const v1 = await verdictOf(b1.id);
      assert.equal(v1.verdict, "pass", `${v1.detail}\n${v1.log.join("\n")}`);
      await onScreen("the pass in the boot panel", new RegExp(`boot of build #${b1.id}: PASS`));
      await onScreen("the boot column of the history", new RegExp(`#${b1.id}\\s+ok\\s+\\S+\\s+boot pass`));

      fs.writeFileSync(mainC, withPanic);
      const b2 = buildWait(out, env);
      assert.equal(b2.ok, true);
      const v2 = await verdictOf(b2.id);
      assert.equal(v2.verdict, "panic", `${v2.detail}\n${v2.log.join("\n")}`);
      assert.match(v2.detail, /Kernel panic - not syncing: ktld-boot-panic/);
      await onScreen("the panic in the boot panel", /PANIC .*ktld-boot-panic/);

      // A boot that hangs; a save while it runs cancels it (its qemu goes), the next passes.
      fs.writeFileSync(mainC, withMarker("ktld-boot-hang"));
      const b3 = buildWait(out, env);
      await waitFor("the hanging boot to run", () => (status(out).boot?.running === b3.id && processesWith("-kernel", vmlinux).length ? true : undefined), 60_000);
      fs.writeFileSync(mainC, withMarker("ktld-boot-marker-2"));
      const b4 = buildWait(out, env);
      assert.equal(b4.ok, true);
      assert.equal(status(out).history.find((h) => h.id === b3.id)?.boot?.verdict, "cancelled");
      const v4 = await verdictOf(b4.id);
      assert.equal(v4.verdict, "pass", `${v4.detail}\n${v4.log.join("\n")}`);
      assert.deepEqual(processesWith("-kernel", vmlinux), [], "a qemu is left running");

      fs.writeFileSync(mainC, withMarker("ktld-boot-hang"));
      const b5 = buildWait(out, env);
      const v5 = await verdictOf(b5.id);
      assert.equal(v5.verdict, "timeout", `${v5.detail}\n${v5.log.join("\n")}`);
      await onScreen("the timeout in the boot panel", new RegExp(`boot of build #${b5.id}: TIMEOUT`));
      assert.deepEqual(processesWith("-kernel", vmlinux), [], "a qemu is left running");

      tmux("send-keys", "-t", session, "l");
      await onScreen("the boot console one key away", /boot console \(\d+ lines; l closes\)/);
      await onScreen("the end of the console", /KTLD-VERDICT|ktld: init: userspace reached|Run \/init/);
      tmux("send-keys", "-t", session, "l");
      await onScreen("the dashboard again", /recent builds/);

      const log = ktld(["log", "--boot", "--build-dir", out], env);
      assert.equal(log.status, 0);
      assert.match(log.stdout, /ktld-boot-hang/);
      const why = JSON.parse(ktld(["why", "init/main.o", "--build-dir", out, "--json"], env).stdout) as { build: number; boot?: BootJson };
      assert.equal(why.build, b5.id);
      assert.equal(why.boot?.verdict, "timeout");
    } finally {
      tmux("kill-session", "-t", session);
      fs.writeFileSync(mainC, original);
    }
  });
});
