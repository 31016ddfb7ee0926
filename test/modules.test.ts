// Kernel modules (`.ko`) through distributed ThinLTO, on the developer fixture (ext4, jbd2,
// mbcache, loop, crc32c... as =m): the daemon remakes the module an edit touches and nothing
// else, with the BE jobs of the members whose inputs changed; its natives equal the seed's
// recipe rebuilt from kbuild's records; an exported symbol's prototype change remakes vmlinux and the
// module that imports it, with modpost's CRCs; and the modules load and work in qemu.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { MAKE_ARGS } from "../scripts/fixture";
import { nativePath } from "../src/kbuild/names";
import { buildWait, editFile, execBounded, ktld, primedCopy, sectionContents, spawnBounded } from "./helpers";
import { referenceNatives } from "./reference";

const env = fixtureEnv("dev");

interface KernelModuleJson {
  name: string;
  ko: string;
  reason: string;
  backend: { compiled: number; cacheHits: number; jobs: { object: string; action: string; reason: string }[] };
  link: { skipped: boolean };
}
interface Report {
  id: number;
  ok: boolean;
  error?: string;
  diagnostics?: string;
  backend: { units: number; compiled: number; cacheHits: number };
  link: { skipped: boolean };
  kernelModules: KernelModuleJson[];
  modulesFinal?: { steps: string[]; skipped?: string };
}

/** A statement in a function of kernel/sys.c that only vmlinux has (not exported, no types). */
const SYS_ANCHOR = "SYSCALL_DEFINE0(getpid)\n{\n";

const built = (out: string): Report => {
  const r = buildWait<Report>(out, env);
  assert.equal(r.ok, true, `${r.error ?? ""}\n${r.diagnostics ?? ""}`);
  return r;
};

/** Each unit of ext4: its bitcode, index and imports files, by content. */
function ext4Inputs(out: string): Map<string, string> {
  const members = fs.readFileSync(path.join(out, "fs/ext4/ext4.mod"), "utf8").split("\n").filter(Boolean);
  return new Map(members.map((m) => [m, [m, `${m}.thinlto.bc`, `${m}.imports`].map((f) => hashFile(path.join(out, f)) ?? "-").join(" ")]));
}

/** The CRCs a `.ko` was linked with (its `__versions`: 8 bytes of CRC, 56 of name, per entry). */
function versionsOf(ko: string): Map<string, string> {
  const tmp = path.join(os.tmpdir(), `ktld-versions-${process.pid}`);
  execBounded("llvm-objcopy-19", ["-O", "binary", "--only-section=__versions", ko, tmp]);
  const b = fs.readFileSync(tmp);
  fs.rmSync(tmp, { force: true });
  const out = new Map<string, string>();
  for (let o = 0; o + 64 <= b.length; o += 64) {
    const name = b.subarray(o + 8, o + 64).toString("latin1").replace(/\0.*$/s, "");
    out.set(name, `0x${b.readUInt32LE(o).toString(16).padStart(8, "0")}`);
  }
  return out;
}

function symversCrc(out: string, symbol: string): string | undefined {
  const line = fs.readFileSync(path.join(out, "Module.symvers"), "utf8").split("\n").find((l) => l.split("\t")[1] === symbol);
  return line?.split("\t")[0];
}

describe("kernel modules through distributed ThinLTO (developer fixture)", { timeout: 45 * 60_000 }, () => {
  // A copy of the fixture as ktld's first build on make's tree left it.
  const { buildDir: out, first } = primedCopy("dev");
  const src = path.dirname(out);
  const inode = path.join(src, "fs/ext4/inode.c");
  const original = fs.readFileSync(inode, "utf8");
  const ANCHOR = "\t\t   struct buffer_head *bh, int create)\n{\n\treturn _ext4_get_block(";
  assert.ok(original.includes(ANCHOR), "fs/ext4/inode.c has no ext4_get_block as expected");
  const work = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-modules-"));
  after(() => {
    ktld(["stop", "--build-dir", out], env);
    fs.rmSync(work, { recursive: true, force: true });
  });

  test("a function edit in fs/ext4/inode.c remakes ext4.ko alone, with the BE jobs of the ext4 units whose inputs changed; every native of ext4.ko equals the seed's recipe rebuilt from kbuild's records", async () => {
    // The first build made every module kbuild listed (a single-object one from its source).
    const firstModules = (first as unknown as Report).kernelModules;
    assert.ok(firstModules.some((m) => m.name === "ext4") && firstModules.some((m) => m.name === "loop"), JSON.stringify(firstModules.map((m) => m.name)));
    assert.equal(ktld(["start", "--build-dir", out], env).status, 0);
    assert.equal(built(out).backend.compiled, 0, "the daemon's start-up build on the tree ktld built compiled something");
    const vmlinux = hashFile(path.join(out, "vmlinux"));
    const loopKo = hashFile(path.join(out, "drivers/block/loop.ko"));
    const before = ext4Inputs(out);

    editFile(inode, ANCHOR, "\t\t   struct buffer_head *bh, int create)\n{\n\tif (iblock == 123456789)\n\t\tpr_info(\"ktld-ext4-marker\\n\");\n\treturn _ext4_get_block(");
    const r = built(out);
    assert.deepEqual(r.kernelModules.map((m) => m.name), ["ext4"], "an ext4 edit made other modules");
    assert.equal(r.backend.units, 0, "an ext4 edit ran vmlinux's BE");
    assert.equal(hashFile(path.join(out, "vmlinux")), vmlinux, "an ext4 edit changed vmlinux");
    assert.equal(hashFile(path.join(out, "drivers/block/loop.ko")), loopKo, "an ext4 edit changed loop.ko");
    const after = ext4Inputs(out);
    const changed = [...after].filter(([m, h]) => before.get(m) !== h).map(([m]) => m).sort();
    const ext4 = r.kernelModules[0];
    assert.deepEqual(ext4.backend.jobs.map((j) => j.object).sort(), changed, "BE jobs are not the units whose bitcode, index or imports changed");
    assert.ok(changed.includes("fs/ext4/inode.o") && changed.length < after.size / 2, changed.join(" "));
    const ko = fs.readFileSync(path.join(out, "fs/ext4/ext4.ko"));
    assert.ok(ko.includes("ktld-ext4-marker"), "the edit is not in ext4.ko");
    // ktld why: the module, and each unit's FE and BE reasons.
    const why = (what: string) => JSON.parse(ktld(["why", what, "--build-dir", out, "--json"], env).stdout) as { build: number; frontend: { reason: string } | null; backend: { reason: string } | null; kernelModule?: { name: string } };
    assert.equal(why("fs/ext4/ext4.ko").kernelModule?.name, "ext4");
    const wi = why("fs/ext4/inode.o");
    assert.equal(wi.build, r.id);
    assert.match(wi.frontend?.reason ?? "", /source .*fs\/ext4\/inode\.c changed/);
    assert.match(wi.backend?.reason ?? "", /bitcode changed/);
    assert.equal(ktld(["stop", "--build-dir", out], env).status, 0);

    // The reference, sharing no code with ktld: the seed's recipe rebuilt from kbuild's records
    // (the thin-link of kbuild's own ext4.o link, each member's BE from its recorded FE
    // command). Every native ext4.ko is linked from, the unchanged members' as well, is its.
    const recipe = await referenceNatives(out, path.join(work, "recipe"), 2, "fs/ext4/ext4.o");
    assert.deepEqual([...recipe.keys()].sort(), [...after.keys()].sort(), "the recipe's thin-link indexed another set of ext4's units");
    const differ = [...recipe].filter(([o, h]) => hashFile(path.join(out, nativePath(o))) !== h).map(([o]) => o);
    assert.deepEqual(differ, [], "ext4 natives that differ from the seed's recipe");
  });

  test("undo: ext4.ko from the cache, no BE compile; --install-mod-path installs each fresh .ko as modules_install does", () => {
    const mods = path.join(work, "install");
    assert.equal(ktld(["start", "--build-dir", out, "--install-mod-path", mods], env).status, 0);
    built(out);
    fs.writeFileSync(inode, original);
    const r = built(out);
    assert.deepEqual(r.kernelModules.map((m) => m.name), ["ext4"]);
    assert.equal(r.kernelModules[0].backend.compiled, 0, JSON.stringify(r.kernelModules[0].backend.jobs));
    assert.ok(r.kernelModules[0].backend.cacheHits > 0);
    const ko = fs.readFileSync(path.join(out, "fs/ext4/ext4.ko"));
    assert.ok(!ko.includes("ktld-ext4-marker"));
    // Installed as `make modules_install INSTALL_MOD_PATH=` places it, with depmod's index.
    const release = fs.readFileSync(path.join(out, "include/config/kernel.release"), "utf8").trim();
    const lib = path.join(mods, "lib/modules", release);
    assert.ok(fs.readFileSync(path.join(lib, "kernel/fs/ext4/ext4.ko")).equals(ko), "the installed ext4.ko is not the fresh one");
    assert.match(fs.readFileSync(path.join(lib, "modules.dep"), "utf8"), /^kernel\/fs\/ext4\/ext4\.ko: .*kernel\/fs\/jbd2\/jbd2\.ko/m);
  });

  test("a function edit in kernel/sys.c relinks vmlinux alone; its symbol versions and BTF are the modules' own, so kbuild's module steps are skipped: make modules then agrees, and when forced makes every .ko with the same sections", () => {
    const sys = path.join(src, "kernel/sys.c");
    const kos = fs.readFileSync(path.join(out, "modules.order"), "utf8").split("\n").filter(Boolean).map((o) => o.replace(/\.o$/, ".ko"));
    const hashes = () => kos.map((k) => hashFile(path.join(out, k)));
    const contents = () => kos.map((k) => sectionContents(path.join(out, k)));
    const before = hashes();
    const beforeContents = contents();
    const symvers = hashFile(path.join(out, "Module.symvers"));
    editFile(sys, SYS_ANCHOR, `${SYS_ANCHOR}\tpr_info("ktld-sys-marker\\n");\n`);
    const r = built(out);
    assert.equal(r.link.skipped, false, "vmlinux was not relinked");
    assert.deepEqual(r.kernelModules.map((m) => m.name), [], "a vmlinux edit remade module objects");
    assert.match(r.modulesFinal?.skipped ?? "", /symbol versions and BTF/, JSON.stringify(r.modulesFinal));
    assert.deepEqual(hashes(), before, "a skipped module step changed a .ko");
    assert.equal(ktld(["stop", "--build-dir", out], env).status, 0);
    try {
      // kbuild's make agrees: nothing of modpost or the module link is out of date.
      const agree = spawnBounded("make", [...MAKE_ARGS, "O=out", "modules"], { cwd: src, env, timeout: 10 * 60_000 });
      assert.equal(agree.status, 0, agree.stderr.slice(-4000));
      assert.deepEqual(agree.stdout.split("\n").filter((l) => /\[M\]|MODPOST|^\s+(CC|LD|AR)\s/.test(l)), [], "make redid module work ktld skipped");
      // The reference, kbuild's own: every .ko and Module.symvers made older than everything,
      // make relinks each .ko and makes its BTF against the fresh vmlinux.
      const old = new Date("2000-01-01T00:00:00Z");
      for (const f of [...kos, "Module.symvers"]) fs.utimesSync(path.join(out, f), old, old);
      const forced = spawnBounded("make", [...MAKE_ARGS, "O=out", "modules"], { cwd: src, env, timeout: 10 * 60_000 });
      assert.equal(forced.status, 0, forced.stderr.slice(-4000));
      const btf = forced.stdout.split("\n").filter((l) => /^\s+BTF \[M\]/.test(l));
      assert.equal(btf.length, kos.length, `make did not remake every module's BTF:\n${forced.stdout}`);
      // Every section's bytes, not the file's: kbuild's own BTF step run again on a .ko (as make
      // does after each vmlinux relink) moves sections within the file (objcopy), with the same
      // contents. What the modules hold is what kbuild makes now.
      assert.deepEqual(contents(), beforeContents, "kbuild's own module steps made .ko sections other than the ones ktld kept");
      assert.equal(hashFile(path.join(out, "Module.symvers")), symvers, "kbuild's modpost wrote another Module.symvers");
    } finally {
      fs.writeFileSync(sys, fs.readFileSync(sys, "utf8").replace(`\tpr_info("ktld-sys-marker\\n");\n`, ""));
      assert.equal(ktld(["start", "--build-dir", out], env).status, 0);
    }
    assert.equal(built(out).ok, true);
  });

  test("a prototype change of a symbol loop.ko imports from vmlinux remakes both, modpost's CRCs agree, and in qemu loop and ext4 load and mount an image", () => {
    const sys = path.join(src, "kernel/sys.c");
    const loop = path.join(src, "drivers/block/loop.c");
    const probe = (t: string) => `\n${t} ktld_loop_probe(${t} x);\n${t} ktld_loop_probe(${t} x)\n{\n\treturn x + 1;\n}\nEXPORT_SYMBOL(ktld_loop_probe);\n`;
    const use = (t: string) => `${t} ktld_loop_probe(${t} x);\nstatic int __init loop_init(void)\n{\n\tpr_info("ktld-loop-probe %d\\n", (int)ktld_loop_probe(41));\n`;
    const INIT = "static int __init loop_init(void)\n{\n";
    fs.appendFileSync(sys, probe("int"));
    editFile(loop, INIT, use("int"));
    const r1 = built(out);
    assert.ok(r1.kernelModules.some((m) => m.name === "loop"), JSON.stringify(r1.kernelModules.map((m) => m.name)));
    const crc1 = symversCrc(out, "ktld_loop_probe");
    assert.ok(crc1, "ktld_loop_probe is not in Module.symvers");
    assert.equal(versionsOf(path.join(out, "drivers/block/loop.ko")).get("ktld_loop_probe"), crc1);

    fs.writeFileSync(sys, fs.readFileSync(sys, "utf8").replace(probe("int"), probe("long")));
    fs.writeFileSync(loop, fs.readFileSync(loop, "utf8").replace(use("int"), use("long")));
    const r2 = built(out);
    assert.equal(r2.link.skipped, false, "vmlinux was not relinked");
    assert.ok(r2.kernelModules.some((m) => m.name === "loop"), "loop.ko was not remade");
    const crc2 = symversCrc(out, "ktld_loop_probe");
    assert.ok(crc2 && crc2 !== crc1, `the prototype change left the CRC ${crc1}`);
    assert.equal(versionsOf(path.join(out, "drivers/block/loop.ko")).get("ktld_loop_probe"), crc2, "loop.ko has another CRC than Module.symvers");
    assert.equal(ktld(["stop", "--build-dir", out], env).status, 0);

    // An ext4 image with a file, made on the host; the guest mounts it through a loop device.
    const content = `ktld-read-back-${process.pid}`;
    fs.mkdirSync(path.join(work, "root"));
    fs.writeFileSync(path.join(work, "root", "hello.txt"), `${content}\n`);
    execBounded("mkfs.ext4", ["-q", "-F", "-d", path.join(work, "root"), path.join(work, "ext4.img"), "8M"]);
    const script = path.join(work, "mount.sh");
    fs.writeFileSync(script, [
      "#!/bin/sh",
      "set -e",
      "modprobe crc32c_generic",
      "modprobe loop",
      "modprobe ext4",
      "losetup /dev/loop0 ./ext4.img",
      "mkdir -p /mnt",
      "mount -t ext4 /dev/loop0 /mnt",
      "cat /mnt/hello.txt | sed 's/^/KTLD-FILE /'",
      "",
    ].join("\n"), { mode: 0o755 });
    const b = ktld(["boot", "--build-dir", out, "--boot-run", script, "--json"], env, 300_000);
    const boot = JSON.parse(b.stdout) as { verdict: string; detail: string; log: string[]; console: string };
    const consoleText = fs.readFileSync(boot.console, "utf8");
    assert.equal(boot.verdict, "pass", `${boot.detail}\n${consoleText.slice(-4000)}`);
    assert.match(consoleText, /ktld-loop-probe 42/, "loop.ko's init did not run the probe");
    assert.match(consoleText, new RegExp(`KTLD-FILE ${content}`), "the file did not read back through loop and ext4");
    assert.doesNotMatch(consoleText, /disagrees about version of symbol|Unknown symbol|failed to validate module|BTF.*(mismatch|fail)/i);
  });
});
