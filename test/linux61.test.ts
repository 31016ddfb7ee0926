// Linux 6.1 LTS (the `thin61` fixture: Debian's linux-source-6.1, tinyconfig + ThinLTO, with
// what a boot to a busybox initramfs needs). Its kbuild writes `cmd_` records and links
// `.tmp_vmlinux.kallsyms1/2` where 6.12 writes `savedcmd_` and links `.tmp_vmlinux1/2`; ktld
// reads the tree's own records and runs its own link steps. The references share nothing
// with ktld: the natives of the seed's recipe rebuilt from kbuild's records, and kbuild's own
// vmlinux.o command and make of vmlinux over them.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { nativePath } from "../src/kbuild/names";
import { buildWait, execBounded, fixtureCopy, hashesOf, ktld, spawnBounded } from "./helpers";
import { assertKbuildLink, recordedCommand, referenceNatives } from "./reference";

const BOOT_ANCHOR = "static int __ref kernel_init(void *unused)\n{\n";
const HEADER = "include/linux/statfs.h";
/** A kernel module of several members (lib/xz/xz_dec.ko) and one of a single object. */
const XZ = { object: "lib/xz/xz_dec.o", ko: "lib/xz/xz_dec.ko", source: "lib/xz/xz_dec_syms.c" };
const CCITT_KO = "lib/crc-ccitt.ko";

interface Build {
  id: number; ok: boolean; error?: string; frontend: { compiled: number }; backend: { compiled: number; units: number };
  link: { skipped: boolean }; kernelModules: { name: string; backend: { jobs: { object: string }[] } }[];
}
interface Status { history: { id: number; report: { frontendJobs: { object: string }[] } }[] }

describe("Linux 6.1 LTS: one-shot build, the daemon's edits, a boot", { timeout: 40 * 60_000 }, () => {
  const tree = fixtureCopy("linux61", "thin61");
  const env = fixtureEnv();
  const memo = new Map<string, string>();
  after(() => ktld(["stop", "--build-dir", tree], env));

  /** The natives in the tree against the recipe's, then vmlinux against kbuild's link of them. */
  const checkAgainstKbuild = async () => {
    const want = await referenceNatives(tree, path.join(path.dirname(tree), "reference"), 2, "vmlinux.o", memo);
    const have = new Map([...hashesOf(tree, ".thinlto-native.o")].map(([f, h]) => [f.replace(/\.thinlto-native\.o$/, ".o"), h]));
    assert.deepEqual([...want].filter(([o, h]) => have.get(o) !== h).map(([o]) => o), [], "natives that are not the recipe's");
    await assertKbuildLink(tree, env, MAKE_ARGS);
  };

  /** `ktld boot` of the tree's vmlinux (and modules) running `script` in it: the verdict must be pass. */
  const bootPasses = (name: string, script: string) => {
    const check = path.join(path.dirname(tree), name);
    fs.writeFileSync(check, script, { mode: 0o755 });
    const boot = ktld(["boot", "--build-dir", tree, "--boot-run", check, "--json"], env, 300_000);
    const verdict = JSON.parse(boot.stdout || "{}") as { verdict?: string; detail?: string; log?: string[] };
    assert.equal(verdict.verdict, "pass", `${verdict.detail}\n${(verdict.log ?? []).join("\n")}\n${boot.stderr}`);
  };

  test("a 6.1 tree: kbuild's cmd_ records; a one-shot build whose natives are the recipe's and whose vmlinux is kbuild's link of them", async () => {
    assert.match(fs.readFileSync(path.join(tree, "include/config/kernel.release"), "utf8"), /^6\.1\./);
    assert.match(fs.readFileSync(path.join(tree, "kernel/.fork.o.cmd"), "utf8"), /^cmd_kernel\/fork\.o := /);
    // Settle the copy: what make finds to do after a copy (its tool records are moved to the
    // copy, scripts/fixture.ts, so objtool is not rebuilt and vmlinux.o not relinked).
    const settle = spawnBounded("make", [...MAKE_ARGS, "-s", "vmlinux"], { cwd: tree, env, timeout: 20 * 60_000 });
    assert.equal(settle.status, 0, settle.stderr.slice(-3000));
    const r = ktld(["build", "--build-dir", tree, "--json", "-j2"], env, 30 * 60_000);
    const b = JSON.parse(r.stdout || "{}") as Build;
    assert.equal(b.ok, true, `${b.error}\n${r.stderr.slice(-3000)}`);
    assert.ok(b.backend.compiled > 100, `only ${b.backend.compiled} BE compiles in a first build`);
    // 6.1 lists each module as its .ko in modules.order (6.12 as its .o): ktld made both.
    assert.match(fs.readFileSync(path.join(tree, "modules.order"), "utf8"), /^lib\/xz\/xz_dec\.ko$/m);
    const listed = fs.readFileSync(path.join(tree, "modules.order"), "utf8").split("\n").filter(Boolean).map((l) => path.basename(l, ".ko")).sort();
    assert.ok(listed.includes("xz_dec") && listed.includes("crc-ccitt"), listed.join(" "));
    assert.deepEqual(b.kernelModules.map((m) => m.name).sort(), listed, r.stderr.slice(-2000));
    await checkAgainstKbuild();
  });

  test("the daemon: a function edit and a header edit, each kbuild's link of the recipe's natives; the kernel boots with the edit's marker", async () => {
    assert.equal(ktld(["start", "--build-dir", tree, "-j2", "--idle-timeout", "3600"], env).status, 0);
    assert.equal(buildWait(tree, env).ok, true);
    const mainC = path.join(tree, "init/main.c");
    const main = fs.readFileSync(mainC, "utf8");
    assert.ok(main.includes(BOOT_ANCHOR));
    fs.writeFileSync(mainC, main.replace(BOOT_ANCHOR, `${BOOT_ANCHOR}\tpr_info("ktld-61-boot-marker\\n");\n`));
    const f = buildWait<Build>(tree, env);
    assert.equal(f.ok, true, f.error);
    assert.equal(f.frontend.compiled, 1);
    assert.ok(execBounded("strings", [path.join(tree, "vmlinux")]).includes("ktld-61-boot-marker"));

    // A header edit: an FE job for exactly the objects of vmlinux whose records name it.
    const archives = recordedCommand(tree, "vmlinux.o").split(/\s+/).filter((w) => w.endsWith(".a"));
    const members = new Set(archives.flatMap((a) => execBounded("llvm-ar-19", ["t", a], { cwd: tree }).split("\n").filter(Boolean)));
    const users = [...members].filter((o) => {
      try {
        return fs.readFileSync(path.join(tree, path.dirname(o), `.${path.basename(o)}.cmd`), "utf8").includes(` ${HEADER} `) || fs.readFileSync(path.join(tree, path.dirname(o), `.${path.basename(o)}.cmd`), "utf8").includes(`${HEADER} \\`);
      } catch {
        return false;
      }
    }).sort();
    assert.ok(users.length >= 2, `only ${users.join(", ")} include ${HEADER}`);
    const header = path.join(tree, HEADER);
    const text = fs.readFileSync(header, "utf8");
    fs.writeFileSync(header, `${text}extern int ktld_61_decl;\n`);
    const h = buildWait<Build>(tree, env);
    assert.equal(h.ok, true, h.error);
    const st = JSON.parse(ktld(["status", "--build-dir", tree, "--json"], env).stdout) as Status;
    const fe = st.history.find((e) => e.id === h.id)!.report.frontendJobs.map((j) => j.object).sort();
    assert.deepEqual(fe, users);
    fs.writeFileSync(header, text);
    assert.equal(buildWait(tree, env).ok, true);
    ktld(["stop", "--build-dir", tree], env);
    await checkAgainstKbuild();

    // The kernel boots to the initramfs and printed the edit's marker.
    bootPasses("check.sh", "dmesg | grep -q ktld-61-boot-marker && exit 0\nexit 1\n");
    fs.writeFileSync(mainC, main);
  });

  test("kernel modules: an edit in lib/xz remakes xz_dec.ko alone, every native of it the recipe's; kbuild's make modules agrees; the module loads in qemu and runs the edit", async () => {
    assert.equal(ktld(["start", "--build-dir", tree, "-j2", "--idle-timeout", "3600"], env).status, 0);
    assert.equal(buildWait(tree, env).ok, true);
    const vmlinux = hashFile(path.join(tree, "vmlinux"));
    const ccitt = hashFile(path.join(tree, CCITT_KO));
    const src = path.join(tree, XZ.source);
    const text = fs.readFileSync(src, "utf8");
    fs.writeFileSync(src, `${text}\nstatic int __init ktld_61_init(void)\n{\n\tpr_info("ktld-61-module-marker\\n");\n\treturn 0;\n}\nmodule_init(ktld_61_init);\n`);
    const r = buildWait<Build>(tree, env);
    assert.equal(r.ok, true, r.error);
    assert.deepEqual(r.kernelModules.map((m) => m.name), ["xz_dec"], "a lib/xz edit made other modules");
    assert.equal(r.backend.units, 0, "a module edit ran vmlinux's BE");
    assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinux, "a module edit changed vmlinux");
    assert.equal(hashFile(path.join(tree, CCITT_KO)), ccitt, "an xz_dec edit changed crc-ccitt.ko");
    assert.ok(r.kernelModules[0].backend.jobs.some((j) => j.object === "lib/xz/xz_dec_syms.o"), JSON.stringify(r.kernelModules[0].backend.jobs));
    assert.ok(fs.readFileSync(path.join(tree, XZ.ko)).includes("ktld-61-module-marker"), "the edit is not in xz_dec.ko");
    ktld(["stop", "--build-dir", tree], env);

    // The recipe: the thin-link of kbuild's own record of the xz_dec.o link (its @xz_dec.mod
    // list), each member's BE from its recorded FE command.
    const recipe = await referenceNatives(tree, path.join(path.dirname(tree), "recipe-xz"), 2, XZ.object);
    const members = fs.readFileSync(path.join(tree, XZ.object.replace(/\.o$/, ".mod")), "utf8").split(/\s+/).filter(Boolean).sort();
    assert.ok(members.length >= 3, members.join(" "));
    assert.deepEqual([...recipe.keys()].sort(), members, "the recipe's thin-link indexed another set of xz_dec's members");
    const differ = [...recipe].filter(([o, h]) => hashFile(path.join(tree, nativePath(o))) !== h).map(([o]) => o);
    assert.deepEqual(differ, [], "xz_dec natives that differ from the seed's recipe");
    // kbuild's own make finds nothing of the modules to redo.
    const agree = spawnBounded("make", [...MAKE_ARGS, "modules"], { cwd: tree, env, timeout: 10 * 60_000 });
    assert.equal(agree.status, 0, agree.stderr.slice(-4000));
    assert.deepEqual(agree.stdout.split("\n").filter((l) => /\[M\]|MODPOST|^\s+(CC|LD|AR)\s/.test(l)), [], "make redid module work ktld had done");

    bootPasses("xz.sh", "modprobe xz_dec || exit 1\ndmesg | grep -q ktld-61-module-marker && exit 0\nexit 1\n");
    fs.writeFileSync(src, text);
  });
});
