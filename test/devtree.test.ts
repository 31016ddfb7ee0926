// The developer fixture: what kernel developers build. Debian's 6.12, tinyconfig +
// kvm_guest.config + ThinLTO, CONFIG_MODULES (ext4 and loop as =m), MODVERSIONS, KALLSYMS,
// DWARF5 debug info and BTF, built out of tree (O=out) with `make all`. Then save → boot →
// test: `ktld boot` once, and the daemon with --boot --boot-run booting each fresh kernel in
// qemu, watched in the TUI through tmux.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { DEV_BUILD_DIR, ensureFixture, fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { elfSection } from "../src/elf";
import type { BuildJson } from "../src/protocol";
import { referenceVmlinuxO } from "./reference";
import { bootLog, busyboxInitramfs, editFile, elfShape, execBounded, KTLD, ktld, primedCopy, multisetDiff, processesWith, spawnBounded, buildWait, daemonStatus, waitFor } from "./helpers";

// The second kallsyms link from the last kallsyms object is tried (it is off by default).
const env = { ...fixtureEnv("dev"), KTLD_KALLSYMS_FROM_LAST: "1" };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Status { notHandled: string[]; history: { id: number; ok: boolean; report: { notHandled?: string[]; frontendJobs: { object: string }[]; kernelModules?: { name: string }[] } }[] }

const status = (out: string): Status => daemonStatus<Status>(out, env);

/** The reason of a build's BTF step (ktld's PAHOLE: reused, or pahole ran and why). */
function btfStep(b: BuildJson): string {
  const step = b.link.steps?.find((s) => s.name.startsWith("BTF "));
  assert.ok(step, `no BTF step in the link: ${JSON.stringify(b.link)}`);
  return step.reason ?? "";
}

/** The reason of a build's kallsyms passes (the second link from the last kallsyms object, or kbuild's passes and why). */
function kallsymsStep(b: BuildJson): string {
  const step = b.link.steps?.find((s) => s.name === "kallsyms");
  assert.ok(step, `no kallsyms step in the link: ${JSON.stringify(b.link)}`);
  return step.reason ?? "";
}
/** The BTF step's reason when pahole ran ahead of objtool (src/btfahead.ts). */
const AHEAD = /pahole ran ahead/;
const FROM_LAST = /^the second link started from the last link's kallsyms object, beside the first pass, whose object lays out as that one/;
const NOT_FROM_LAST = /^kbuild's second link and pass ran after the first: the first pass's kallsyms object is unlike the last link's: its (sections differ in size|symbols differ)$/;

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

// One copy of the fixture for both suites of this file, as ktld's first build on make's tree
// left it (made once per version of ktld's code and shared with test/modules.test.ts: that
// build, 3-4 minutes on 2 cores, is the most expensive step of a test run); the boot suite
// runs on the tree the first suite left.
const { buildDir: out, first } = primedCopy("dev");
const src = path.dirname(out);

describe("the developer fixture (O=, modules, MODVERSIONS, kallsyms, DWARF5 + BTF)", { timeout: 60 * 60_000 }, () => {
  // kbuild's own vmlinux.o (in-process ThinLTO) and vmlinux: the fixture's, which ktld has
  // not touched.
  const kbuilt = path.join(ensureFixture("dev"), DEV_BUILD_DIR);
  const kbuildShape = elfShape(path.join(kbuilt, "vmlinux.o"));
  const kbuildBtf = btfOf(path.join(kbuilt, "vmlinux"));
  /** The probe's CRCs (int, then long) and sys.o's #SYMVER lines, as ktld's build left them. */
  const probeCrcs: (string | undefined)[] = [];
  const ktldSymvers: string[] = [];
  after(() => ktld(["stop", "--build-dir", out], env));

  test("the first ktld build on make's tree goes through modpost, kallsyms and BTF; vmlinux.o has kbuild's sections and symbols", () => {
    const r = first;
    assert.equal(r.ok, true);
    assert.equal(r.backend.compiled, r.backend.modules, "the first build did not compile every unit");
    assert.equal(r.link.skipped, false);
    assert.ok(r.backend.modules > 500, `${r.backend.modules} bitcode units`);
    const shape = elfShape(path.join(out, "vmlinux.o"));
    // CALL_PADDING: a __patchable_function_entries section per function in kbuild's vmlinux.o;
    // ktld's goes without them, as the final link's script discards them (src/kbuild/ldscript.ts).
    // With them kbuild's has more than 65,279 sections, hence extended section indices
    // (.symtab_shndx); ktld's, without them, has fewer and needs none.
    const patchable = (s: string) => s === "__patchable_function_entries" || s === ".rela__patchable_function_entries" || s === ".symtab_shndx";
    assert.ok(kbuildShape.sections.filter(patchable).length > 1000, "kbuild's vmlinux.o has no __patchable_function_entries: the fixture lacks CALL_PADDING");
    assert.deepEqual(shape.sections.filter(patchable), [], "ktld's vmlinux.o has __patchable_function_entries");
    assert.match(r.link.steps?.find((s) => s.name === "LD vmlinux.o")?.reason ?? "", /^without __patchable_function_entries: the final link \(arch\/x86\/kernel\/vmlinux\.lds\) discards them/);
    assert.deepEqual(multisetDiff(kbuildShape.sections.filter((s) => !patchable(s)), shape.sections), { onlyA: [], onlyB: [] }, "sections differ (kbuild's, ktld's)");
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
    // The link's steps as kbuild's final link printed them: the link with debug info for BTF,
    // pahole, the kallsyms links, the final one, resolve_btfids, the table sort.
    const steps = (r.link.steps ?? []).map((s) => s.name);
    for (const s of ["LD vmlinux.o", "OBJTOOL vmlinux.o", "LD .tmp_vmlinux1", "BTF .tmp_vmlinux1.btf.o", "KSYMS .tmp_vmlinux0.kallsyms.S", "LD .tmp_vmlinux2", "LD vmlinux", "BTFIDS vmlinux", "SORTTAB vmlinux"]) {
      assert.ok(steps.includes(s), `no link step ${s}: ${steps.join(", ")}`);
    }
    // Made without KTLD_KALLSYMS_FROM_LAST (the primed copy is shared): kbuild's kallsyms passes,
    // one after the other, and the kallsyms object kept for the daemon's links below.
    assert.equal(kallsymsStep(r), "kbuild's passes: the second link from the last kallsyms object is off (KTLD_KALLSYMS_FROM_LAST=1)");
    assert.ok(fs.existsSync(path.join(out, ".ktld", "kallsyms-last.o")), "the final link's kallsyms object was not kept");
  });

  test("through the daemon: a function edit in kernel/sys.c makes a fresh vmlinux; a change to loop.c remakes loop.ko alone", async () => {
    const s = ktld(["start", "--build-dir", out], env);
    assert.equal(s.status, 0, s.stderr);
    assert.equal(buildWait(out, env).ok, true);
    editFile(path.join(src, "kernel/sys.c"), "SYSCALL_DEFINE0(getpid)\n{\n", "SYSCALL_DEFINE0(getpid)\n{\n\tpr_info(\"ktld-dev-marker\\n\");\n");
    const first = buildWait<BuildJson & { id: number }>(out, env);
    assert.equal(first.ok, true, `${first.error ?? ""}\n${first.diagnostics ?? ""}`);
    // kernel/sys.c called no printk before: the call brings _printk's declaration into the
    // unit's DWARF, and the string a char[N]; what changes in its encoding is simple types
    // (const char *, char[N], char moved up) that objects before it have, so the last .BTF is
    // put back (kbuild's own pahole agrees: the same rule's reuse below is compared with it,
    // and test/unit.test.ts shows the rule against pahole).
    assert.match(btfStep(first), /^reused: \d+ changed object\(s\) have the types and functions they had \(up to simple types that objects before them have: kernel\/sys\.thinlto-native\.o \(/);
    // A call and a string added, no symbol: the first pass's kallsyms object lays out as the
    // last link's, so the second link started from that one (and the vmlinux is kbuild's:
    // assertKbuildFinalLink below, after edits of each kind).
    assert.match(kallsymsStep(first), FROM_LAST);
    // Foreseen before the link: .tmp_vmlinux1, linked for pahole alone, went without debug info.
    assert.match(btfStep(first), /; \.tmp_vmlinux1 linked without debug info$/);
    // A message of a length no object before kernel/sys.o has a string of: its char[N] is a
    // simple type that .BTF would take from this unit, so pahole runs, and ktld why says why.
    const odd = "ktld-dev-marker-odd-length".padEnd(3011, "~");
    editFile(path.join(src, "kernel/sys.c"), "ktld-dev-marker\\n", `${odd}\\n`);
    const oddBuild = buildWait<BuildJson & { id: number }>(out, env);
    assert.equal(oddBuild.ok, true, `${oddBuild.error ?? ""}\n${oddBuild.diagnostics ?? ""}`);
    assert.match(btfStep(oddBuild), /^pahole ran ahead: the types or functions of kernel\/sys\.thinlto-native\.o changed \(it brings a simple type that the last \.BTF does not have, so no earlier object has it\); its image/);
    const oddWhy = JSON.parse(ktld(["why", "vmlinux", "--build-dir", out, "--json"], env).stdout) as { build: number; steps: { step: string; ran: boolean; reason: string }[] };
    assert.equal(oddWhy.build, oddBuild.id);
    assert.deepEqual(oddWhy.steps.filter((s) => s.step === "BTF").map((s) => [s.ran, s.reason]), [[true, btfStep(oddBuild)]]);
    // Ahead of objtool, on an image linked from vmlinux.o before it; its .BTF is put in
    // .tmp_vmlinux1, linked once, without debug info.
    const oddSteps = (oddBuild.link.steps ?? []).map((s) => s.name);
    for (const s of ["LD .tmp_vmlinux1 ahead", "pahole ahead"]) assert.ok(oddSteps.includes(s), `no link step ${s}: ${oddSteps.join(", ")}`);
    assert.ok(oddSteps.indexOf("LD .tmp_vmlinux1 ahead") < oddSteps.indexOf("LD .tmp_vmlinux1"), "the image for pahole was not linked before .tmp_vmlinux1");
    // System.map beside the table sort, said on the sort's step (vmlinux and System.map are
    // compared with kbuild's final link below).
    assert.match((oddBuild.link.steps ?? []).find((s) => s.name === "SORTTAB vmlinux")?.reason ?? "", /^System\.map made beside it/);
    assert.match(btfStep(oddBuild), /; \.tmp_vmlinux1 linked without debug info$/);
    // The message changed, its length not (a string of another length is another char[N]
    // in the unit's DWARF): every type, function and symbol pahole reads is as it was, and
    // the last .BTF is reused.
    editFile(path.join(src, "kernel/sys.c"), `${odd}\\n`, "ktld-dev-marker!");
    const b = buildWait<BuildJson & { id: number }>(out, env);
    assert.equal(b.ok, true, `${b.error ?? ""}\n${b.diagnostics ?? ""}`);
    assert.match(btfStep(b), /^reused: \d+ changed object\(s\) have the types and functions they had/);
    // Foreseen before the link: .tmp_vmlinux1, linked for pahole's DWARF alone, went without it.
    assert.match(btfStep(b), /; \.tmp_vmlinux1 linked without debug info$/);
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
    const added = buildWait<BuildJson & { id: number }>(out, env);
    assert.equal(added.ok, true);
    // A new function: its object's types and functions changed, so pahole runs. Ahead of
    // objtool it ran on an image with the last link's .vmlinux.export.o, which the new export
    // changes; that bitcode unit has no function, and its debug metadata (which ktld reads)
    // is the same before and after, so the .BTF made ahead is taken. (Kbuild's
    // pahole agrees: the .BTF of the prototype change below, made the same way, is reused by
    // the last edit, whose vmlinux and .BTF assertKbuildFinalLink compares with kbuild's.)
    const AHEAD_TAKEN = /^pahole ran ahead: the types or functions of kernel\/sys\.thinlto-native\.o changed \(a type or function that is not simple changed\); its image, linked from vmlinux\.o before objtool, has these objects/;
    assert.match(btfStep(added), AHEAD_TAKEN);
    assert.match(btfStep(added), /; \.tmp_vmlinux1 linked without debug info$/);
    // New symbols: the kallsyms object grows, the second link waits for the first pass.
    assert.match(kallsymsStep(added), NOT_FROM_LAST);
    const crc1 = symversCrc(out, "ktld_export_probe");
    assert.equal(symverLine(out, "kernel/sys.o", "ktld_export_probe"), crc1, "the CRC in the .cmd file and in the symvers differ");
    fs.writeFileSync(sys, fs.readFileSync(sys, "utf8").replace(probe("int ktld_export_probe(int x)"), probe("long ktld_export_probe(long x)")));
    const retyped = buildWait<BuildJson & { id: number }>(out, env);
    assert.equal(retyped.ok, true);
    // Its CRC changed too (MODVERSIONS), and .vmlinux.export.o with it (its asm): pahole ahead again.
    assert.match(btfStep(retyped), AHEAD_TAKEN, "a prototype change reused the BTF, or pahole ahead was not taken");
    probeCrcs.push(crc1, symversCrc(out, "ktld_export_probe"));
    assert.notEqual(probeCrcs[1], crc1, "a prototype change left the CRC as it was");
    assert.equal(symverLine(out, "kernel/sys.o", "ktld_export_probe"), probeCrcs[1]);
    ktldSymvers.push(...symverLines(out, "kernel/sys.o"));
    assert.ok(ktldSymvers.length >= 5, ktldSymvers.join("\n"));
    // The kept kallsyms object damaged (cut to half): its link fails, kbuild's second link
    // runs, the build does not fail, and the object is kept whole again.
    const kept = path.join(out, ".ktld", "kallsyms-last.o");
    const size = fs.statSync(kept).size;
    fs.truncateSync(kept, Math.floor(size / 2));
    fs.writeFileSync(sys, fs.readFileSync(sys, "utf8").replace("\treturn x + 1;\n}\nEXPORT_SYMBOL(ktld_export_probe);", "\treturn x + 3;\n}\nEXPORT_SYMBOL(ktld_export_probe);"));
    const damaged = buildWait<BuildJson & { id: number }>(out, env);
    assert.equal(damaged.ok, true, `${damaged.error ?? ""}\n${damaged.diagnostics ?? ""}`);
    assert.match(kallsymsStep(damaged), /^kbuild's second link and pass ran after the first: its link with the last kallsyms object failed/);
    assert.ok(fs.readFileSync(kept).equals(fs.readFileSync(path.join(out, ".tmp_vmlinux2.kallsyms.o"))), "the final link's kallsyms object was not kept");
    // The probe's body changed and prints (its string a char[N] that objects before
    // kernel/sys.o have, and char and friends move up before it in the unit's DWARF): the
    // .BTF of the prototype change is reused (kbuild's pahole agrees: assertKbuildFinalLink).
    fs.writeFileSync(sys, fs.readFileSync(sys, "utf8").replace("\treturn x + 3;\n}\nEXPORT_SYMBOL(ktld_export_probe);", "\tpr_info(\"ktld probe %d\\n\", x);\n\treturn x + 2;\n}\nEXPORT_SYMBOL(ktld_export_probe);"));
    const body = buildWait<BuildJson & { id: number }>(out, env);
    assert.equal(body.ok, true);
    assert.match(btfStep(body), /^reused: \d+ changed object\(s\) have the types and functions they had \(up to simple types that objects before them have: kernel\/sys\.thinlto-native\.o \([^)]+\)\)/);
    // The second link from the last kallsyms object (kbuild's: assertKbuildFinalLink, next).
    assert.match(kallsymsStep(body), FROM_LAST);
    assert.equal(ktld(["stop", "--build-dir", out], env).status, 0);
  });

  /** A daemon started, `edit` made, its build awaited and the daemon stopped: the build, and
   * `ktld why vmlinux` of it. */
  async function daemonBuild(edit: () => void, e: NodeJS.ProcessEnv = env) {
    assert.equal(ktld(["start", "--build-dir", out], e).status, 0);
    try {
      assert.equal(buildWait(out, e).ok, true);
      edit();
      const b = buildWait<BuildJson & { id: number }>(out, e);
      assert.equal(b.ok, true, `${b.error ?? ""}\n${b.diagnostics ?? ""}`);
      const why = JSON.parse(ktld(["why", "vmlinux", "--build-dir", out, "--json"], e).stdout) as { build: number; steps: { step: string; ran: boolean; reason: string }[] };
      assert.equal(why.build, b.id);
      return { b, why };
    } finally {
      assert.equal(ktld(["stop", "--build-dir", out], e).status, 0);
    }
  }

  /** The reference for the tree as ktld left it: vmlinux.o linked by kbuild's recorded command
   * (with its __patchable_function_entries) over ktld's natives, and objtool; then make, given
   * that vmlinux.o without a vmlinux, runs link-vmlinux.sh with the real pahole. Its vmlinux and
   * System.map must be ktld's, byte for byte; ktld's files are put back afterwards (same bytes,
   * same times), so that make sees the tree as ktld left it. No daemon may run meanwhile. */
  async function assertKbuildFinalLink(what: string, makeEnv: NodeJS.ProcessEnv = env): Promise<void> {
    const keep = ["vmlinux", "System.map", "vmlinux.o"];
    const made = Object.fromEntries(keep.map((f) => [f, hashFile(path.join(out, f))]));
    const times = keep.map((f) => [f, fs.statSync(path.join(out, f))] as const);
    const ktldO = path.join(os.tmpdir(), `ktld-vmlinux.o-${process.pid}`);
    fs.copyFileSync(path.join(out, "vmlinux.o"), ktldO);
    const btfBefore = elfSection(path.join(out, "vmlinux"), ".BTF");
    try {
      await referenceVmlinuxO(out);
      assert.ok(elfShape(path.join(out, "vmlinux.o")).sections.filter((s) => s === "__patchable_function_entries").length > 1000, "the reference vmlinux.o has no __patchable_function_entries");
      assert.notEqual(hashFile(path.join(out, "vmlinux.o")), made["vmlinux.o"], "the reference vmlinux.o is ktld's");
      fs.rmSync(path.join(out, "vmlinux"));
      const r = spawnBounded("make", [...MAKE_ARGS, "O=out", "vmlinux"], { cwd: src, env: makeEnv, encoding: "utf8", maxBuffer: 256 << 20 });
      assert.equal(r.status, 0, r.stderr.slice(-3000));
      assert.match(r.stdout, /^\s+BTF\s+\.tmp_vmlinux1\.btf\.o$/m, "make did not run pahole");
      assert.doesNotMatch(r.stdout, /^\s+(CC|AR|LD)\s+vmlinux\.(o|a)$/m, "make relinked vmlinux.o: the reference is not of kbuild's command over ktld's natives");
      assert.ok(btfBefore && elfSection(path.join(out, "vmlinux"), ".BTF")?.equals(btfBefore), `${what}: the .BTF sections differ`);
      for (const f of ["vmlinux", "System.map"]) assert.equal(hashFile(path.join(out, f)), made[f], `${what}: ${f} differs from kbuild's`);
    } finally {
      fs.copyFileSync(ktldO, path.join(out, "vmlinux.o"));
      fs.rmSync(ktldO, { force: true });
      for (const [f, st] of times) if (fs.existsSync(path.join(out, f))) fs.utimesSync(path.join(out, f), st.atime, st.mtime);
    }
  }

  test("kbuild's own vmlinux.o command over ktld's natives, then kbuild's own final link (its pahole), make ktld's vmlinux and System.map byte for byte: the sections ktld leaves out of vmlinux.o and the .BTF it reused included", async () => {
    // The last build reused the .BTF, with .tmp_vmlinux1 linked without debug info (above).
    await assertKbuildFinalLink("a body edit (the .BTF reused)");
  });

  test("a field added to a struct BTF describes, then a function renamed: pahole runs (ktld why says why), the .BTF and kallsyms follow, and each vmlinux is kbuild's", async () => {
    const printk = path.join(src, "kernel/printk/printk.c");
    const sys = path.join(src, "kernel/sys.c");
    const field = await daemonBuild(() => editFile(printk, "\tstruct printk_buffers pbufs;\n};", "\tstruct printk_buffers pbufs;\n\tint ktld_probe_field;\n};"));
    // The types changed: pahole runs, ahead of objtool.
    assert.match(btfStep(field.b), new RegExp(`^${AHEAD.source}: the types or functions of kernel/printk/printk\\.thinlto-native\\.o changed \\(a type or function that is not simple changed\\); `));
    assert.deepEqual(field.why.steps.filter((s) => s.step === "BTF").map((s) => [s.ran, s.reason]), [[true, btfStep(field.b)]]);
    assert.match(field.why.steps.find((s) => s.step === "vmlinux.o")?.reason ?? "", /^without __patchable_function_entries/);
    // The second link from the last kallsyms object, or (printk.c's promoted locals renamed:
    // `f.llvm.<its new hash>`) kbuild's; ktld why says which.
    assert.match(kallsymsStep(field.b), new RegExp(`${FROM_LAST.source}|${NOT_FROM_LAST.source}`));
    assert.deepEqual(field.why.steps.filter((s) => s.step === "kallsyms").map((s) => s.reason), [kallsymsStep(field.b)]);
    assert.match(execBounded("pahole", ["-F", "btf", "-C", "devkmsg_user", path.join(out, "vmlinux")], { encoding: "utf8" }), /ktld_probe_field/, "the new field is not in vmlinux's BTF");
    await assertKbuildFinalLink("a field added to struct devkmsg_user");

    const renamed = await daemonBuild(() => fs.writeFileSync(sys, fs.readFileSync(sys, "utf8").replace(/\boverride_release\b/g, "ktld_override_release")));
    assert.match(btfStep(renamed.b), new RegExp(`^${AHEAD.source}: `));
    // A longer name: the first pass's object is unlike the last one, kbuild's second link ran.
    assert.match(kallsymsStep(renamed.b), NOT_FROM_LAST);
    assert.deepEqual(renamed.why.steps.filter((s) => s.step === "kallsyms").map((s) => s.reason), [kallsymsStep(renamed.b)]);
    const map = fs.readFileSync(path.join(out, "System.map"), "utf8");
    assert.match(map, / ktld_override_release$/m, "the new name is not in System.map");
    assert.doesNotMatch(map, / override_release$/m, "the old name is still in System.map");
    await assertKbuildFinalLink("a function renamed");
  });

  test("a link that writes another build number into UTS_VERSION (a developer's tree: KBUILD_BUILD_VERSION not fixed): init/version-timestamp.o is made again, the .BTF is reused, and vmlinux is kbuild's", async () => {
    const envFile = path.join(out, ".ktld", "kbuild-env.json");
    const vt = path.join(out, "init/version-timestamp.o");
    const before = hashFile(vt);
    /** The daemon started in `e` takes kbuild's environment afresh (ktld keeps it as make
     * exported it), after kbuild's own rule made init/version.o for `e` (make rebuilds it when
     * its temporary UTS_VERSION changes, as the build number does; the link then writes the
     * final one into version-timestamp.o): its first build, and the daemon stopped. */
    const startIn = (e: NodeJS.ProcessEnv) => {
      fs.rmSync(envFile, { force: true });
      const made = spawnBounded("make", [...MAKE_ARGS, "O=out", "init/version.o"], { cwd: src, env: e, encoding: "utf8" });
      assert.equal(made.status, 0, made.stderr.slice(-3000));
      assert.equal(ktld(["start", "--build-dir", out], e).status, 0);
      try {
        const b = buildWait<BuildJson & { id: number }>(out, e);
        assert.equal(b.ok, true, `${b.error ?? ""}\n${b.diagnostics ?? ""}`);
        return b;
      } finally {
        assert.equal(ktld(["stop", "--build-dir", out], e).status, 0);
      }
    };
    const env2 = { ...env, KBUILD_BUILD_VERSION: "2" };
    const b = startIn(env2);
    assert.match(fs.readFileSync(path.join(out, "include/generated/utsversion.h"), "utf8"), /"#2 /, "the link did not write the new build number");
    assert.notEqual(hashFile(vt), before, "init/version-timestamp.o was not made again");
    // The objects that changed (init/version.o and the version object, a bitcode unit whose
    // debug metadata is as it was: the build number has the same length) keep their types.
    assert.match(btfStep(b), /^reused: \d+ changed object\(s\) have the types and functions they had/);
    await assertKbuildFinalLink("another build number in UTS_VERSION", env2);
    // Back to the fixture's build number, for the tests that follow.
    const back = startIn(env);
    assert.match(btfStep(back), /^reused: /);
    assert.equal(hashFile(vt), before, "init/version-timestamp.o is not the fixture's again");
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

interface BootJson { ok: boolean; verdict: string; detail: string; ms: number; accel: string; log: string[] }
interface BootStatus {
  boot: { running: number | null; waiting: { build: number; why: string } | null; last: (BootJson & { build: number }) | null } | null;
  history: { id: number; ok: boolean; boot?: BootJson }[];
}

const bootStatus = (tree: string): BootStatus => daemonStatus<BootStatus>(tree, env);


describe("save → boot → test on the developer fixture (qemu, busybox initramfs)", { timeout: 30 * 60_000 }, () => {
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
  /** The daemon with --boot-run SCRIPT, its startup build done. */
  const startBootDaemon = (check: string, timeoutS: number) => {
    const started = ktld(["start", "--build-dir", out, "--idle-timeout", "3600", "--boot-run", check, "--boot-timeout", String(timeoutS)], env);
    assert.equal(started.status, 0, started.stderr);
    assert.equal(buildWait(out, env).ok, true, "the startup build");
  };

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
    startBootDaemon(check, 20);

    const session = `ktld-boot-${process.pid}`;
    const tmux = (...args: string[]) => spawnBounded("tmux", args, { encoding: "utf8", env: { ...env, TERM: "xterm-256color" } });
    const screen = () => tmux("capture-pane", "-p", "-t", session).stdout;
    const onScreen = (what: string, re: RegExp, ms = 180_000) => waitFor(what, () => (re.test(screen()) ? true : undefined), ms);
    const verdictOf = (id: number, ms = 240_000) => waitFor(`the boot of build #${id}`, () => bootStatus(out).history.find((h) => h.id === id)?.boot, ms);
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
      await waitFor("the hanging boot to run", () => (bootStatus(out).boot?.running === b3.id && processesWith("-kernel", vmlinux).length ? true : undefined), 60_000);
      fs.writeFileSync(mainC, withMarker("ktld-boot-marker-2"));
      const b4 = buildWait(out, env);
      assert.equal(b4.ok, true);
      assert.equal(bootStatus(out).history.find((h) => h.id === b3.id)?.boot?.verdict, "cancelled");
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
  // KTLD_BOOT_REPS=10 for the full run (40-60 s a save on 2 cores); CI runs 2: each kind of save once.
  const reps = Number(process.env.KTLD_BOOT_REPS ?? 2);
  test(`a save in several writes (truncate, a pause, write; a temp file renamed over the source) boots the edited kernel to pass, ${reps} times, though a build with nothing to do runs during each boot`, async () => {
    ktld(["stop", "--build-dir", out], env);
    // The script names the marker the running kernel printed, and takes its time, so that
    // the same-bytes save below lands while it runs.
    const check = script("marker.sh", [
      "m=$(dmesg | grep -o 'ktld-rep-[0-9]*' | head -n 1)",
      "echo \"KTLD-SAW $m\"",
      "sleep 3",
      "[ -n \"$m\" ]",
    ].join("\n"));
    startBootDaemon(check, 60);
    const daemonLog = () => fs.readFileSync(path.join(out, ".ktld/daemon.log"), "utf8").split("\n");
    try {
      for (let i = 1; i <= reps; i++) {
        const content = withMarker(`ktld-rep-${i}`);
        if (i % 2) {
          // truncate + write, with a pause between them (the daemon's settle time is 50 ms)
          const fd = fs.openSync(mainC, "r+");
          fs.ftruncateSync(fd, 0);
          await sleep(120);
          fs.writeSync(fd, content);
          fs.closeSync(fd);
        } else {
          const tmp = `${mainC}.ktld-save`;
          fs.writeFileSync(tmp, content);
          fs.renameSync(tmp, mainC);
        }
        const b = buildWait(out, env);
        assert.equal(b.ok, true, `save ${i}: ${JSON.stringify(b).slice(0, 2000)}`);
        await waitFor(`the boot of build #${b.id} to run`, () => (bootStatus(out).boot?.running === b.id ? true : undefined), 60_000);
        // The editor's second write of the same bytes: a build with nothing to do, during the boot.
        const noops = daemonLog().filter((l) => /no content change: nothing to do/.test(l)).length;
        fs.writeFileSync(mainC, content);
        await waitFor(`save ${i}: the daemon's build of the same bytes`, () => (daemonLog().filter((l) => /no content change: nothing to do/.test(l)).length > noops ? true : undefined), 30_000);
        const st = await waitFor(`save ${i}: the verdict of build #${b.id}'s kernel`, () => {
          const s = bootStatus(out);
          return s.boot?.running === null && s.boot.last?.build === b.id ? s : undefined;
        }, 120_000);
        const v = st.boot!.last!;
        assert.equal(v.verdict, "pass", `save ${i}: ${v.detail}\n${v.log.join("\n")}`);
        assert.equal(st.history.find((h) => h.id === b.id)?.boot?.verdict, "pass");
        assert.match(ktld(["log", "--boot", "--build-dir", out], env).stdout, new RegExp(`KTLD-SAW ktld-rep-${i}\\b`), `save ${i}: the boot was not of the edited kernel`);
        // The blow landed: the no-op build ran between this boot's start and its verdict.
        const log = daemonLog();
        const start = log.findIndex((l) => l.includes(`[BOOT] #${b.id}: booting`));
        const noop = log.findIndex((l, k) => k > start && /no content change: nothing to do/.test(l));
        const verdict = log.findIndex((l) => l.includes(`[BOOT] #${b.id}: pass`));
        assert.ok(start >= 0 && start < noop && noop < verdict, `save ${i}: the no-op build did not run during the boot:\n${log.slice(-30).join("\n")}`);
        assert.ok(!log.some((l) => l.includes(`[BOOT] #${b.id}: cancelled`)), `save ${i}: build #${b.id}'s boot was cancelled`);
        assert.deepEqual(processesWith("-kernel", vmlinux), [], "a qemu is left running");
      }
    } finally {
      fs.writeFileSync(mainC, original);
    }
  });
});
