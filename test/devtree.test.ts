// The developer fixture: what kernel developers build. Debian's 6.12, tinyconfig +
// kvm_guest.config + ThinLTO, CONFIG_MODULES (ext4 and loop as =m), MODVERSIONS, KALLSYMS,
// DWARF5 debug info and BTF, built out of tree (O=out) with `make all`.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/hash";
import { bootLog, busyboxInitramfs, editFile, elfShape, execBounded, fixtureCopy, ktld, ktldBuild, multisetDiff, spawnBounded, buildWait, daemonStatus } from "./helpers";

const env = fixtureEnv("dev");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Status { notHandled: string[]; history: { id: number; ok: boolean; report: { notHandled?: string[]; frontendJobs: { object: string }[]; kernelModules?: { name: string }[] } }[] }

const status = (out: string): Status => daemonStatus<Status>(out, env);


/** The `#SYMVER` lines kbuild's rule (or ktld's FE replay) left in an object's .cmd file. */
function symverLines(out: string, object: string): string[] {
  const cmd = path.join(out, path.dirname(object), `.${path.basename(object)}.cmd`);
  return fs.readFileSync(cmd, "utf8").split("\n").filter((l) => l.startsWith("#SYMVER "));
}

function symverLine(out: string, object: string, symbol: string): string | undefined {
  return symverLines(out, object).find((l) => l.split(" ")[1] === symbol)?.split(" ")[2];
}

/** A symbol's CRC as modpost wrote it for vmlinux (vmlinux.symvers, or Module.symvers after make modules). */
function symversCrc(out: string, symbol: string): string | undefined {
  const files = ["vmlinux.symvers", "Module.symvers"].map((f) => path.join(out, f)).filter((f) => fs.existsSync(f));
  const newest = files.sort((a, b) => fs.statSync(b).mtimeMs - fs.statSync(a).mtimeMs)[0];
  assert.ok(newest, "no symvers file");
  const line = fs.readFileSync(newest, "utf8").split("\n").find((l) => l.split("\t")[1] === symbol);
  assert.ok(line, `${symbol} is not in ${path.basename(newest)}`);
  return line.split("\t")[0];
}

/** The .BTF section's size, and the types it describes as pahole prints them (type ids,
 * which depend on the order of the units, left out). */
function btfOf(vmlinux: string): { size: number; types: string } {
  const dump = execBounded("pahole", ["-F", "btf", vmlinux], { encoding: "utf8", maxBuffer: 256 << 20 });
  const types = dump.split("\n").filter((l) => !l.startsWith("BTF: idx")).map((l) => l.replace(/0x[0-9a-f]+ not found/g, "<id> not found")).join("\n");
  const size = /\.BTF\s+\S+\s+\S+\s+\S+\s+(\S+)/.exec(execBounded("readelf", ["-SW", vmlinux], { encoding: "utf8" }))?.[1];
  assert.ok(size, "no .BTF section");
  return { size: Number.parseInt(size, 16), types };
}

function sectionsOf(file: string): string {
  return execBounded("llvm-readelf-19", ["-S", "-W", file]);
}

describe("the developer fixture (O=, modules, MODVERSIONS, kallsyms, DWARF5 + BTF)", { timeout: 60 * 60_000 }, () => {
  const out = fixtureCopy("dev", "dev");
  const src = path.dirname(out);
  // kbuild's own vmlinux.o (in-process ThinLTO), before ktld relinks it.
  const kbuildShape = elfShape(path.join(out, "vmlinux.o"));
  const kbuildBtf = btfOf(path.join(out, "vmlinux"));
  /** The probe's CRCs (int, then long) and sys.o's #SYMVER lines, as ktld's build left them. */
  const probeCrcs: (string | undefined)[] = [];
  const ktldSymvers: string[] = [];
  after(() => ktld(["stop", "--build-dir", out], env));

  test("the first ktld build on make's tree goes through modpost, kallsyms and BTF; vmlinux.o has kbuild's sections and symbols", () => {
    const r = ktldBuild(out, [], env);
    assert.equal(r.ok, true);
    assert.ok(r.backend.modules > 500, `${r.backend.modules} bitcode units`);
    const shape = elfShape(path.join(out, "vmlinux.o"));
    assert.deepEqual(multisetDiff(kbuildShape.sections, shape.sections), { onlyA: [], onlyB: [] }, "sections differ (kbuild's, ktld's)");
    assert.deepEqual(multisetDiff(kbuildShape.symbols, shape.symbols), { onlyA: [], onlyB: [] }, "symbols differ (kbuild's, ktld's)");
    const vmlinux = sectionsOf(path.join(out, "vmlinux"));
    assert.match(vmlinux, / \.BTF /, "vmlinux has no .BTF section");
    // pahole over the same DWARF types: the same .BTF, up to the order types are numbered in
    // (kbuild's in-process LTO emits the units in another order than the link's).
    const btf = btfOf(path.join(out, "vmlinux"));
    assert.equal(btf.size, kbuildBtf.size, "the .BTF sections differ in size");
    assert.equal(btf.types, kbuildBtf.types, "the BTF types differ from kbuild's");
    assert.match(vmlinux, / \.debug_info /, "vmlinux has no DWARF");
    assert.match(execBounded("llvm-nm-19", [path.join(out, "vmlinux")]), / [Tt] kallsyms_lookup_name\n/);
  });

  test("through the daemon: a function edit in kernel/sys.c makes a fresh vmlinux; a change to loop.c remakes loop.ko alone", async () => {
    const s = ktld(["start", "--build-dir", out], env);
    assert.equal(s.status, 0, s.stderr);
    assert.equal(buildWait(out, env).ok, true);
    editFile(path.join(src, "kernel/sys.c"), "SYSCALL_DEFINE0(getpid)\n{\n", "SYSCALL_DEFINE0(getpid)\n{\n\tpr_info(\"ktld-dev-marker\\n\");\n");
    const b = buildWait(out, env);
    assert.equal(b.ok, true, `${b.error ?? ""}\n${b.diagnostics ?? ""}`);
    assert.ok(fs.readFileSync(path.join(out, "vmlinux")).includes("ktld-dev-marker"), "the edit is not in vmlinux");
    const vmlinux = hashFile(path.join(out, "vmlinux"));
    const loopKo = hashFile(path.join(out, "drivers/block/loop.ko"));
    const loop = path.join(src, "drivers/block/loop.c");
    editFile(loop, "static int __init loop_init(void)\n{\n", "static int __init loop_init(void)\n{\n\tpr_info(\"ktld-loop-edit\\n\");\n");
    await sleep(500);
    const after = buildWait(out, env);
    assert.equal(after.ok, true, `${after.error ?? ""}\n${after.diagnostics ?? ""}`);
    const st = status(out);
    assert.deepEqual(st.notHandled, []);
    const rep = st.history[0].report;
    assert.deepEqual(rep.frontendJobs.map((j) => j.object), ["drivers/block/loop.o"]);
    assert.deepEqual((rep.kernelModules ?? []).map((m) => m.name), ["loop"], "a loop.c edit built other modules");
    assert.equal(hashFile(path.join(out, "vmlinux")), vmlinux, "a module-only edit changed vmlinux");
    assert.notEqual(hashFile(path.join(out, "drivers/block/loop.ko")), loopKo, "loop.ko was not remade");
    assert.ok(fs.readFileSync(path.join(out, "drivers/block/loop.ko")).includes("ktld-loop-edit"), "the edit is not in loop.ko");

    // MODVERSIONS: an exported function added, then its prototype changed. kbuild's rule for
    // an object appends genksyms' CRCs to its .cmd file, and modpost puts them in the symvers.
    const sys = path.join(src, "kernel/sys.c");
    const probe = (proto: string) => `\n${proto}\n{\n\treturn x + 1;\n}\nEXPORT_SYMBOL(ktld_export_probe);\n`;
    fs.appendFileSync(sys, probe("int ktld_export_probe(int x)"));
    assert.equal(buildWait(out, env).ok, true);
    const crc1 = symversCrc(out, "ktld_export_probe");
    assert.equal(symverLine(out, "kernel/sys.o", "ktld_export_probe"), crc1, "the CRC in the .cmd file and in the symvers differ");
    fs.writeFileSync(sys, fs.readFileSync(sys, "utf8").replace(probe("int ktld_export_probe(int x)"), probe("long ktld_export_probe(long x)")));
    assert.equal(buildWait(out, env).ok, true);
    probeCrcs.push(crc1, symversCrc(out, "ktld_export_probe"));
    assert.notEqual(probeCrcs[1], crc1, "a prototype change left the CRC as it was");
    assert.equal(symverLine(out, "kernel/sys.o", "ktld_export_probe"), probeCrcs[1]);
    ktldSymvers.push(...symverLines(out, "kernel/sys.o"));
    assert.ok(ktldSymvers.length >= 5, ktldSymvers.join("\n"));
    assert.equal(ktld(["stop", "--build-dir", out], env).status, 0);
  });

  test("make vmlinux after ktld agrees: no in-process LTO relink, ktld's vmlinux.o kept", () => {
    const before = hashFile(path.join(out, "vmlinux.o"));
    const r = spawnBounded("make", [...MAKE_ARGS, "O=out", "vmlinux"], { cwd: src, env });
    assert.equal(r.status, 0, r.stderr.slice(-3000));
    assert.deepEqual(r.stdout.split("\n").filter((l) => /^\s+(CC|LD|AR)\s/.test(l)), [], "make redid work ktld had done");
    assert.equal(hashFile(path.join(out, "vmlinux.o")), before, "make relinked vmlinux.o");
  });

  test("make modules after ktld does nothing for the modules ktld made; ktld's vmlinux boots (busybox initramfs): the edit's marker prints, /proc/kallsyms has the edited function where nm puts it, ktld's loop.ko loads with CRC checks", () => {
    const kos = ["drivers/block/loop.ko", "fs/ext4/ext4.ko"].map((k) => hashFile(path.join(out, k)));
    const mods = spawnBounded("make", [...MAKE_ARGS, "O=out", "modules"], { cwd: src, env });
    assert.equal(mods.status, 0, mods.stderr.slice(-3000));
    assert.deepEqual(mods.stdout.split("\n").filter((l) => /\[M\]|MODPOST|^\s+(CC|LD|AR)\s/.test(l)), [], "make redid module work ktld had done");
    assert.deepEqual(["drivers/block/loop.ko", "fs/ext4/ext4.ko"].map((k) => hashFile(path.join(out, k))), kos, "make changed a .ko ktld made");
    const initrd = busyboxInitramfs(path.join(out, "..", "ktld-test-initramfs.cpio"), [
      "echo KTLD-PID $$", // busybox sh asks getpid() for $$: the edited syscall runs
      "/bin/busybox grep ' __x64_sys_getpid$' /proc/kallsyms | /bin/busybox sed 's/^/KTLD-KALLSYMS /'",
      "/bin/busybox insmod /loop.ko && /bin/busybox grep -q '^loop ' /proc/modules && echo KTLD-INSMOD-OK",
    ].join("\n"), { "loop.ko": path.join(out, "drivers/block/loop.ko") });
    const log = bootLog(path.join(out, "vmlinux"), { initrd, append: "nokaslr" });
    assert.match(log, /Linux version 6\.12/, log.slice(-3000));
    assert.match(log, /ktld-dev-marker/, log.slice(-3000));
    const booted = /KTLD-KALLSYMS ([0-9a-f]+) [Tt] __x64_sys_getpid/.exec(log);
    assert.ok(booted, log.slice(-3000));
    const nm = /^([0-9a-f]+) [Tt] __x64_sys_getpid$/m.exec(execBounded("llvm-nm-19", [path.join(out, "vmlinux")], { encoding: "utf8", maxBuffer: 256 << 20 }));
    assert.ok(nm, "nm vmlinux lists no __x64_sys_getpid");
    assert.equal(booted[1], nm[1], "/proc/kallsyms and nm vmlinux disagree");
    assert.doesNotMatch(log, /disagrees about version of symbol|Unknown symbol|no symbol version/, log.slice(-3000));
    assert.match(log, /KTLD-INSMOD-OK/, log.slice(-3000));
    assert.match(log, /ktld-loop-edit/, "loop.ko's init is not the one ktld rebuilt");
  });

  test("MODVERSIONS: kbuild's own rule for kernel/sys.o gives the CRCs ktld's FE replay recorded", () => {
    assert.equal(probeCrcs.length, 2, "the daemon test did not get that far");
    // Last: make recompiles sys.o here (its source made newer), with kbuild's gen_symversions.
    const now = new Date();
    fs.utimesSync(path.join(src, "kernel/sys.c"), now, now);
    const r = spawnBounded("make", [...MAKE_ARGS, "O=out", "kernel/sys.o"], { cwd: src, env });
    assert.equal(r.status, 0, r.stderr.slice(-3000));
    assert.match(r.stdout, /CC\s+kernel\/sys\.o/, "make did not recompile kernel/sys.o");
    assert.deepEqual(symverLines(out, "kernel/sys.o"), ktldSymvers);
  });
});
