// Unit tests of the pure parts: shell words, .cmd files, BE planning, reports.
import { discards, PATCHABLE_SECTION, planVmlinuxO } from "../src/kbuild/ldscript";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { backendArgv, backendKey, BackendInputs, planBackend, argvHash, sharedBackendKey } from "../src/backend";
import { emptyReport } from "../src/build";
import { refreshThinArchive, thinArchiveMembers } from "../src/kbuild/archive";
import { parseCmdFile, unescapeMake } from "../src/kbuild/cmdfile";
import { archivesOfLink, deriveBackendFlags, llvmMakeVar } from "../src/kbuild/tree";
import { incbinNames } from "../src/incbin";
import { HashCache, hashBytes, hashFile, isWholeElf64 } from "../src/base/hash";
import type { KbuildTree } from "../src/kbuild/tree";
import { initcallsCurrent } from "../src/link";
import { BlobDir } from "../src/blobs";
import { NativeCache } from "../src/cache";
import { Store } from "../src/store";
import { jsonReport, reportFromJson, summaryTable } from "../src/report";
import { quoteArgv, splitCommands, tokenize } from "../src/base/shell";
import { UnitRecord } from "../src/store";
import { linkerFlags, publishIndexFiles } from "../src/thinlink";
import { inputArgs } from "../src/kbuild/names";
import { intoTemp, settleMtimes } from "../src/kbuild/dist";
import { nativeInputs } from "../src/link";
import { linkKey, planLink, planModulesFinal, planThinLink, thinLinkKey, thinLinkOutputs } from "../src/steps";
import { execBounded, spawnBounded } from "./helpers";
import { ObjectGraph, planChanges } from "../src/graph";
import type { CmdFile } from "../src/kbuild/cmdfile";
import { madeNewKernel, planBoot } from "../daemon/scheduler";
import { why, whyText } from "../src/why";
import { reportJson } from "./wire";
import { parseTrace, splitTimes, stepOf } from "../scripts/linksplit";
import { moduleLinkArgv, moduleThinLinkArgv, readKernelModules, singleCompileCommand } from "../src/kbuild/modules";
import { encodeCommand, parseReply, RespError } from "../src/resp";
import { makeEntry, openEntry, SharedCache } from "../src/sharedcache";
import { DISTCC_TRAP_FLAG, distccConfig, distccEnv, distccSlots, isDistccFailure, routeFrontend, stripWrapper } from "../src/distcc";

test("shell: quoted kernel defines survive tokenizing and quoting", () => {
  const line = `clang-19 -DKBUILD_MODNAME='"fork"' -D"X=a b" a\\ b -c -o kernel/fork.o kernel/fork.c ; ./tools/objtool/objtool --link vmlinux.o`;
  const cmds = splitCommands(line);
  assert.equal(cmds.length, 2);
  const argv = cmds[0].map((t) => t.value);
  assert.deepEqual(argv.slice(0, 4), ["clang-19", '-DKBUILD_MODNAME="fork"', "-DX=a b", "a b"]);
  assert.deepEqual(tokenize(quoteArgv(argv)).map((t) => t.value), argv);
  assert.throws(() => tokenize("echo 'unterminated"));
});

const CMD = `savedcmd_kernel/fork.o := clang-19 -Wp,-MMD,kernel/.fork.o.d -nostdinc -I./include -DKBUILD_MODNAME='"fork"' -D__KBUILD_MODNAME=kmod_fork -c -o kernel/fork.o kernel/fork.c

source_kernel/fork.o := kernel/fork.c

deps_kernel/fork.o := \\
  include/linux/compiler-version.h \\
    $(wildcard include/config/CC_VERSION_TEXT) \\
  include/linux/kconfig.h \\

kernel/fork.o: $(deps_kernel/fork.o)

$(deps_kernel/fork.o):
`;

test("cmd file: savedcmd, source, deps and wildcard deps", () => {
  const c = parseCmdFile(CMD, "kernel/.fork.o.cmd");
  assert.equal(c.target, "kernel/fork.o");
  assert.equal(c.source, "kernel/fork.c");
  assert.deepEqual(c.deps, ["include/linux/compiler-version.h", "include/linux/kconfig.h"]);
  assert.ok(!c.deps.some((d) => d.includes("CC_VERSION_TEXT") || d.includes("wildcard")), "a wildcard entry is no dep");
  assert.equal(c.depsComplete, true);
  assert.equal(c.savedCFlags, undefined);
});

test("cmd file: older cmd_ lines, saved_c_flags_, make escapes", () => {
  const c = parseCmdFile("cmd_a.o := echo $$HOME \\# x\n\nsaved_c_flags_a.o := -O2 -DX='\"y\"'\n", "a");
  assert.equal(c.command, "echo $HOME # x");
  assert.equal(c.savedCFlags, `-O2 -DX='"y"'`);
  assert.equal(unescapeMake("$$$$"), "$$");
});

test("cmd file: truncated or garbage files are refused with the fix", () => {
  assert.throws(() => parseCmdFile("garbage\n", "x/.a.o.cmd"), /no savedcmd_ line.*rebuild/);
  const cut = CMD.slice(0, CMD.indexOf("include/linux/kconfig.h"));
  assert.throws(() => parseCmdFile(cut, "kernel/.fork.o.cmd"), /truncated/);
  const cutAtLine = CMD.slice(0, CMD.indexOf("kernel/fork.o: $("));
  assert.equal(parseCmdFile(cutAtLine, "kernel/.fork.o.cmd").depsComplete, false);
});

test("BE flags derived from the FE command drop depfile, -c, -o and the source", () => {
  const fe = ["clang-19", "-Wp,-MMD,kernel/.fork.o.d", "-nostdinc", "-include", "./include/linux/kconfig.h", "-O2", "-c", "-o", "kernel/fork.o", "kernel/fork.c"];
  assert.deepEqual(deriveBackendFlags(fe, "kernel/fork.o", "kernel/fork.c"), ["-nostdinc", "-include", "./include/linux/kconfig.h", "-O2"]);
  assert.deepEqual(backendArgv("clang-19", ["-O2"], "kernel/fork.o"), ["clang-19", "-O2", "-x", "ir", "-fno-lto",
    "-Wno-unused-command-line-argument", "-fthinlto-index=kernel/fork.o.thinlto.bc", "-c", "-o", "kernel/fork.thinlto-native.o", "kernel/fork.o"]);
});

test("LLVM= and archives of kbuild's vmlinux.o link", () => {
  assert.equal(llvmMakeVar("clang-19"), "LLVM=-19");
  assert.equal(llvmMakeVar("clang"), "LLVM=1");
  assert.equal(llvmMakeVar("/usr/lib/llvm-19/bin/clang"), "LLVM=/usr/lib/llvm-19/bin/");
  assert.throws(() => llvmMakeVar("gcc"), /not clang/);
  const ld = ["ld.lld-19", "-m", "elf_x86_64", "-mllvm", "-import-instr-limit=5", "-r", "-o", "vmlinux.o", "-T", ".tmp_initcalls.lds",
    "--whole-archive", "vmlinux.a", "--no-whole-archive", "--start-group", "lib/lib.a", "arch/x86/lib/lib.a", "--end-group"];
  const a = archivesOfLink(ld);
  assert.deepEqual(a, { whole: ["vmlinux.a"], libs: ["lib/lib.a", "arch/x86/lib/lib.a"] });
  assert.deepEqual(linkerFlags(ld, new Set([...a.whole, ...a.libs])), ["-m", "elf_x86_64", "-mllvm", "-import-instr-limit=5", "-r"]);
  assert.deepEqual(inputArgs([{ path: "a.o", lazy: false }, { path: "l.o", lazy: true }]), ["a.o", "--start-lib", "l.o", "--end-lib"]);
});

test("final link inputs: natives for loaded modules, lazy unloaded bitcode left out", () => {
  const objs = [
    { path: "init/main.o", bitcode: true, lazy: false },
    { path: "arch/x86/kernel/head_64.o", bitcode: false, lazy: false },
    { path: "lib/ctype.o", bitcode: true, lazy: true },
    { path: "lib/unused.o", bitcode: true, lazy: true },
  ];
  assert.deepEqual(nativeInputs(objs, new Set(["init/main.o", "lib/ctype.o"])).map((o) => o.path),
    ["init/main.thinlto-native.o", "arch/x86/kernel/head_64.o", "lib/ctype.thinlto-native.o"]);
});

test(".incbin names in C inline asm", () => {
  assert.deepEqual(incbinNames(`asm("	.incbin \\"kernel/config_data.gz\\"	\\n");`), ["kernel/config_data.gz"]);
  assert.deepEqual(incbinNames(`.incbin "x.bin"`), ["x.bin"]);
  assert.deepEqual(incbinNames("no asm here"), []);
});

function inputs(over: Partial<BackendInputs> = {}): BackendInputs {
  return {
    object: "kernel/fork.o", bitcode: "b1", index: "i1", imports: { "kernel/sys.o": "s1" },
    argv: ["clang-19", "-O2"], clang: "clang19", incbin: {}, cwd: "/k", ...over,
  };
}

function record(inp: BackendInputs, native = "n1"): UnitRecord {
  return {
    key: backendKey(inp), bitcode: inp.bitcode, index: inp.index, imports: inp.imports, argv: argvHash(inp.argv),
    clang: inp.clang, incbin: inp.incbin, native, nativeStat: { size: 1, mtimeMs: 1, ino: 1 },
  };
}

test("BE plan: unchanged inputs and native → nothing to do", () => {
  const inp = inputs();
  assert.equal(planBackend(inp, record(inp), "as-recorded", () => undefined).kind, "unchanged");
});

test("BE plan: every key component changes the key, with a reason", () => {
  const base = inputs();
  const rec = record(base);
  const cases: [Partial<BackendInputs>, RegExp][] = [
    [{ bitcode: "b2" }, /bitcode changed/],
    [{ index: "i2", imports: { "kernel/sys.o": "s2" } }, /index changed: imports kernel\/sys.o/],
    [{ imports: { "kernel/sys.o": "s2" } }, /imported bitcode changed: kernel\/sys.o/],
    [{ argv: ["clang-19", "-O3"] }, /BE flags changed/],
    [{ clang: "clang20" }, /clang changed/],
    [{ incbin: { "kernel/config_data.gz": "z" } }, /\.incbin kernel\/config_data.gz changed/],
    [{ cwd: "/elsewhere" }, /inputs changed/],
  ];
  for (const [over, reason] of cases) {
    const inp = inputs(over);
    assert.notEqual(backendKey(inp), rec.key, JSON.stringify(over));
    const a = planBackend(inp, rec, "as-recorded", () => undefined);
    assert.equal(a.kind, "compile");
    assert.match(a.reason, reason);
  }
});

test("BE plan: a key seen before is restored; a missing native is restored or rebuilt", () => {
  const a = inputs();
  const b = inputs({ bitcode: "b2" });
  const entry = { native: "n1", size: 10, object: a.object, lastUsed: 0 };
  const cache = (k: string) => (k === backendKey(a) ? entry : undefined);
  assert.equal(planBackend(a, record(b), "as-recorded", cache).kind, "restore");
  assert.equal(planBackend(a, record(a), "missing", cache).kind, "restore");
  const c = planBackend(a, record(a), "modified", () => undefined);
  assert.equal(c.kind, "compile");
  assert.match(c.reason, /native modified on disk/);
  assert.match(planBackend(a, undefined, "missing", () => undefined).reason, /no native/);
});

test("BE plan: kbuild's own native (dist mode) is adopted only when ktld has no record of the module", () => {
  const a = inputs();
  assert.equal(planBackend(a, undefined, "kbuild-current", () => undefined).kind, "adopt");
  // With a record, ktld's own knowledge decides: a changed key compiles.
  assert.equal(planBackend(a, record(inputs({ bitcode: "b0" })), "kbuild-current", () => undefined).kind, "compile");
});

test("thin-link plan: runs with no record, when an object or its command changed, or its outputs were rewritten; else kept, with a reason", () => {
  const files = new Map<string, string>([["a.o", "ha"], ["b.o", "hb"], ["a.o.thinlto.bc", "ia"], ["a.o.imports", "ma"], ["b.o.thinlto.bc", "ib"], ["b.o.imports", "mb"]]);
  const hashOf = (f: string) => files.get(f);
  const argv = ["ld.lld", "--thinlto-index-only", "<stage>"];
  const key = thinLinkKey(argv, ["a.o", "b.o"], hashOf);
  const last = { key, units: ["a.o", "b.o"], outputs: thinLinkOutputs(["a.o", "b.o"], hashOf) };
  const outputs = (u: readonly string[]) => thinLinkOutputs(u, hashOf);
  assert.deepEqual(planThinLink(last, key, outputs), { run: false, reason: "every object as the last thin-link read it" });
  assert.match(planThinLink(undefined, key, outputs).reason, /no thin-link on record/);
  // Each part of the key: an object's bytes, the order, a missing object, the command.
  const keys = [
    thinLinkKey(argv, ["a.o", "b.o"], (f) => (f === "b.o" ? "hb2" : hashOf(f))),
    thinLinkKey(argv, ["b.o", "a.o"], hashOf),
    thinLinkKey(argv, ["a.o", "b.o"], (f) => (f === "a.o" ? undefined : hashOf(f))),
    thinLinkKey([...argv, "-mllvm=-x"], ["a.o", "b.o"], hashOf),
  ];
  assert.equal(new Set([key, ...keys]).size, 5);
  for (const k of keys) assert.deepEqual(planThinLink(last, k, outputs), { run: true, reason: "an object it reads changed" });
  // An index or imports file rewritten by someone else.
  for (const f of ["b.o.thinlto.bc", "a.o.imports"]) {
    const p = planThinLink(last, key, (u) => thinLinkOutputs(u, (x) => (x === f ? "other" : hashOf(x))));
    assert.equal(p.run, true, f);
    assert.match(p.reason, /index or imports files changed/);
  }
});

test("link plan: runs with no record, a missing or foreign output, or a changed input or command; else kept, with a reason", () => {
  const files = new Map([["a.native.o", "n1"], ["head.o", "h1"]]);
  const hashOf = (f: string) => files.get(f);
  const key = linkKey(["ld.lld", "-o", "vmlinux.o"], ["head.o", "a.native.o"], "objtool vmlinux.o", hashOf);
  assert.deepEqual(planLink(key, key, "as made", "vmlinux"), { run: false, reason: "every input as the last link read it" });
  assert.match(planLink(undefined, key, "as made", "vmlinux").reason, /no link on record/);
  assert.match(planLink(key, key, "missing", "vmlinux").reason, /vmlinux is missing/);
  assert.match(planLink(key, key, "changed", "vmlinux").reason, /vmlinux is not the file the last link made/);
  const others = [
    linkKey(["ld.lld", "-o", "vmlinux.o"], ["head.o", "a.native.o"], "objtool vmlinux.o", (f) => (f === "a.native.o" ? "n2" : hashOf(f))),
    linkKey(["ld.lld", "-o", "vmlinux.o"], ["a.native.o", "head.o"], "objtool vmlinux.o", hashOf),
    linkKey(["ld.lld", "--gc-sections", "-o", "vmlinux.o"], ["head.o", "a.native.o"], "objtool vmlinux.o", hashOf),
    linkKey(["ld.lld", "-o", "vmlinux.o"], ["head.o", "a.native.o"], "", hashOf),
  ];
  assert.equal(new Set([key, ...others]).size, 5);
  for (const k of others) {
    const p = planLink(key, k, "as made", "vmlinux");
    assert.equal(p.run, true);
    assert.match(p.reason, /an input or its command changed/);
  }
});

test("module steps plan: nothing when nothing they read moved; skipped only for a vmlinux relink with the same symbol versions, BTF and .ko files; run otherwise, with a reason", () => {
  const rec = { symvers: "s1", btf: "b1", kos: { "fs/ext4/ext4.ko": "e1", "drivers/block/loop.ko": "l1" } };
  const ok = { relinkedModules: 0, vmlinuxRelinked: true, kosPresent: true, kosCurrent: () => true, installed: true };
  let reads = 0;
  const now = (over: object = {}) => () => {
    reads++;
    return { ...rec, ...over };
  };
  const quiet = planModulesFinal({ ...ok, vmlinuxRelinked: false, kosCurrent: () => assert.fail("the .ko times were looked at") }, rec, now());
  assert.deepEqual([quiet.run, quiet.settle, reads], [false, undefined, 0], "nothing moved: vmlinux's BTF is not even read");
  const skip = planModulesFinal(ok, rec, now());
  assert.deepEqual([skip.run, skip.settle], [false, true]);
  assert.match(skip.reason, /symbol versions and BTF are those the modules were made against/);
  const cases: [Partial<typeof ok>, object, RegExp][] = [
    [{ relinkedModules: 1 }, {}, /1 module object\(s\) relinked/],
    [{ kosPresent: false }, {}, /a \.ko is missing/],
    [{ installed: false }, {}, /not installed/],
    [{ kosCurrent: () => false }, {}, /older than its module object/],
    [{}, { symvers: "s2" }, /symbol versions changed/],
    [{}, { btf: "b2" }, /BTF changed/],
    [{}, { btf: null }, /BTF changed/],
    [{}, { kos: { ...rec.kos, "fs/ext4/ext4.ko": "e2" } }, /not the one they made/],
    [{}, { kos: { ...rec.kos, "fs/ext4/ext4.ko": null } }, /not the one they made/],
    [{}, { kos: { "fs/ext4/ext4.ko": "e1" } }, /not the one they made/],
  ];
  for (const [st, cur, reason] of cases) {
    const p = planModulesFinal({ ...ok, ...st }, rec, now(cur));
    assert.equal(p.run, true, String(reason));
    assert.match(p.reason, reason);
  }
  assert.match(planModulesFinal(ok, undefined, now()).reason, /no record/);
  assert.match(planModulesFinal(ok, { ...rec, symvers: null }, now()).reason, /symbol versions changed/);
});

test("settleMtimes: targets older than a prerequisite move forward, in order, and only those", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-settle-"));
  const at = (f: string, s: number) => {
    fs.writeFileSync(path.join(dir, f), f);
    fs.utimesSync(path.join(dir, f), s, s);
  };
  at("builtin.order", 2000);
  at("vmlinux.thinlto-index", 1000); // older than builtin.order
  at("a.thinlto-native.o", 3000); // newer than its inputs
  at("a.o", 1500);
  at("vmlinux.a", 2500); // older than the index once that moves
  const touched = settleMtimes(dir, [
    ["vmlinux.thinlto-index", ["builtin.order"]],
    ["a.thinlto-native.o", ["a.o", "vmlinux.thinlto-index"]],
    ["vmlinux.a", ["vmlinux.thinlto-index", "a.thinlto-native.o"]],
    ["missing", ["builtin.order"]],
  ]);
  assert.deepEqual(touched, ["vmlinux.thinlto-index", "a.thinlto-native.o", "vmlinux.a"]);
  assert.equal(fs.statSync(path.join(dir, "a.o")).mtimeMs, 1500_000);
  assert.deepEqual(settleMtimes(dir, [["vmlinux.a", ["a.o"]]]), []);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("thin archive members, in order, relative to the build dir", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-ar-"));
  fs.mkdirSync(path.join(dir, "lib/sub"), { recursive: true });
  const names = ["lib/a.o", "lib/sub/a-rather-long-file-name.o", "lib/b.o"];
  for (const n of names) fs.writeFileSync(path.join(dir, n), "x");
  execBounded("llvm-ar-19", ["cDPrST", "lib/lib.a", ...names], { cwd: dir });
  assert.deepEqual(thinArchiveMembers(dir, "lib/lib.a"), names);
  fs.writeFileSync(path.join(dir, "bad.a"), "!<thin>\nnonsense-header-of-garbage-that-is-long-enough-to-parse-as-one.....\n");
  assert.throws(() => thinArchiveMembers(dir, "bad.a"), /corrupt archive header/);
  assert.throws(() => thinArchiveMembers(dir, "missing.a"), /missing/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a thin archive refreshed in place has the bytes llvm-ar makes (nested, long names, flattened); one with a symbol table is left to ar", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-ar-"));
  fs.mkdirSync(path.join(dir, "kernel/sub"), { recursive: true });
  const members = ["kernel/fork.o", "kernel/sub/a-rather-long-object-file-name.o", "kernel/b.o"];
  for (const [i, n] of members.entries()) fs.writeFileSync(path.join(dir, n), "x".repeat(100 + i));
  fs.writeFileSync(path.join(dir, "init.o"), "y".repeat(7));
  // kbuild's shape: a built-in.a per directory, and the top one made from them (flattened).
  const ar = (target: string, ...inputs: string[]) => {
    fs.rmSync(path.join(dir, target), { force: true });
    execBounded("llvm-ar-19", ["cDPrST", target, ...inputs], { cwd: dir });
  };
  const make = () => {
    ar("kernel/built-in.a", ...members);
    ar("built-in.a", "init.o", "kernel/built-in.a");
    return ["kernel/built-in.a", "built-in.a"].map((a) => fs.readFileSync(path.join(dir, a)));
  };
  make();
  // An FE replay: fork.o grows past a power of ten, b.o shrinks.
  fs.writeFileSync(path.join(dir, "kernel/fork.o"), "z".repeat(12345));
  fs.writeFileSync(path.join(dir, "kernel/b.o"), "z".repeat(9));
  assert.equal(refreshThinArchive(dir, "kernel/built-in.a"), true);
  assert.equal(refreshThinArchive(dir, "built-in.a"), true);
  const ours = ["kernel/built-in.a", "built-in.a"].map((a) => fs.readFileSync(path.join(dir, a)));
  assert.deepEqual(ours, make(), "the refreshed archives are not what llvm-ar makes");
  assert.deepEqual(thinArchiveMembers(dir, "built-in.a"), ["init.o", ...members]);
  // A symbol table (lib.a: cDPrsT), a missing member, not an archive: false, nothing written.
  fs.writeFileSync(path.join(dir, "sym.c"), "int ktld_sym(void) { return 1; }\n");
  execBounded("clang-19", ["-c", "-o", "sym.o", "sym.c"], { cwd: dir });
  execBounded("llvm-ar-19", ["cDPrsT", "lib.a", "sym.o"], { cwd: dir });
  const lib = fs.readFileSync(path.join(dir, "lib.a"));
  assert.equal(refreshThinArchive(dir, "lib.a"), false);
  assert.ok(fs.readFileSync(path.join(dir, "lib.a")).equals(lib));
  fs.rmSync(path.join(dir, "kernel/b.o"));
  const before = fs.readFileSync(path.join(dir, "built-in.a"));
  assert.equal(refreshThinArchive(dir, "built-in.a"), false);
  assert.ok(fs.readFileSync(path.join(dir, "built-in.a")).equals(before));
  assert.equal(refreshThinArchive(dir, "init.o"), false);
  assert.equal(refreshThinArchive(dir, "none.a"), false);
  assert.deepEqual(fs.readdirSync(dir).filter((f) => f.includes("ktld-tmp")), []);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("report: table and --json shape", () => {
  const r = emptyReport();
  r.ok = true;
  r.backend = { modules: 437, compiled: 12, cacheHits: 1, sharedHits: 0, unchanged: 424, ms: 1200, jobs: [{ object: "kernel/fork.o", action: "compile", reason: "bitcode changed", ms: 300 }] };
  // An empty report ran nothing; this one's thin-link ran.
  assert.match(summaryTable(jsonReport(r)), /thin-link\s+0\s+-\s+1\s/);
  r.thinlink = { ms: 500, skipped: false, indexChanged: 0, reason: "an object it reads changed" };
  const t = summaryTable(jsonReport(r));
  assert.match(t, /backend\s+12\s+1\s+424\s+1\.2 s/);
  assert.match(t, /up to date \(437 bitcode units\)/);
  assert.match(t, /thin-link\s+1\s+-\s+437 idx/);
  // A thin-link the plan kept (its inputs unchanged) is not counted as run.
  assert.match(summaryTable(jsonReport({ ...r, thinlink: { ms: 0, indexChanged: 0, reason: "inputs unchanged", skipped: true } })), /thin-link\s+0\s+-\s+1\s/);
  const j = jsonReport(r);
  // The history's copy of a report reads back as the report it was.
  assert.deepEqual(reportFromJson(j), { ...r, kernelModules: [] });
  assert.equal(j.ok, true);
  assert.equal(j.backend.compiled, 12);
  assert.equal(j.backend.jobs.length, 1);
  for (const n of [j.thinlink.ms, j.link.ms, j.frontend.compiled, j.ms]) assert.equal(typeof n, "number");
});

test("a native must be a whole ELF object: a truncated one is refused", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-elf-"));
  fs.writeFileSync(path.join(dir, "a.c"), "int f(int x) { return x * 3; }\n");
  execBounded("clang-19", ["-c", "-o", "a.o", "a.c"], { cwd: dir });
  const o = fs.readFileSync(path.join(dir, "a.o"));
  assert.equal(isWholeElf64(o), true);
  assert.equal(isWholeElf64(o.subarray(0, o.length - 1)), false);
  assert.equal(isWholeElf64(o.subarray(0, 64)), false);
  assert.equal(isWholeElf64(Buffer.from("BC\xc0\xde")), false);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("initcall order: current while no changed object's initcalls changed", async () => {
  const rec = { lds: "L", members: "M", objects: { "a.o": { hash: "a1", sig: "__initcall__x" }, "b.o": { hash: "b1", sig: "" } } };
  const asked: string[][] = [];
  const sigs = (m: Record<string, string>) => (objs: string[]) => {
    asked.push(objs);
    return new Map(objs.map((o) => [o, m[o] ?? ""]));
  };
  assert.equal(await initcallsCurrent(rec, "L", "M", new Map([["a.o", "a1"], ["b.o", "b1"]]), sigs({})), true);
  assert.deepEqual(asked, [], "nothing changed: no object is scanned");
  assert.equal(await initcallsCurrent(rec, "L", "M", new Map([["a.o", "a2"], ["b.o", "b1"]]), sigs({ "a.o": "__initcall__x" })), true);
  assert.deepEqual(asked, [["a.o"]], "only the changed object is scanned");
  assert.equal(await initcallsCurrent(rec, "L", "M", new Map([["a.o", "a2"], ["b.o", "b1"]]), sigs({ "a.o": "__initcall__y" })), false);
  assert.equal(await initcallsCurrent(rec, "other", "M", new Map([["a.o", "a1"], ["b.o", "b1"]]), sigs({})), false);
  assert.equal(await initcallsCurrent(rec, "L", "other", new Map([["a.o", "a1"], ["b.o", "b1"]]), sigs({})), false);
  assert.equal(await initcallsCurrent(undefined, "L", "M", new Map(), sigs({})), false);
});

test("native cache: an entry counts only with its blob (from the store or the note beside the blobs); a corrupt blob drops its entry; clear forgets blobs, records and the file journal", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-cache-"));
  const store = Store.open({ path: path.join(dir, "store") });
  const notes = path.join(dir, "files.log");
  const cache = new NativeCache(store, new BlobDir(path.join(dir, "blobs")), notes);
  const write = async (w: () => Promise<unknown>) => { await w(); };
  const file = path.join(dir, "a.native.o");
  fs.writeFileSync(file, "native bytes");
  const h = hashBytes(fs.readFileSync(file));
  const put = cache.put("k1", "a.o", file, h, 12, write);
  assert.equal(put.stored, true);
  await put.written;
  assert.equal(cache.lookup("k1")?.native, h);
  // The store lost its entry: the note beside the blobs still finds the native.
  await store.removeCacheEntry("k1");
  assert.equal(cache.lookup("k1")?.native, h);
  assert.equal(cache.lookup("k2"), undefined);
  // A restore: the bytes land at dest; the entry's use is stamped.
  const dest = path.join(dir, "out.o");
  const r = cache.restore("k1", cache.lookup("k1")!, dest, null, write);
  await r.written;
  assert.equal(r.restored, true);
  assert.equal(fs.readFileSync(dest, "utf8"), "native bytes");
  assert.ok((store.cacheEntry("k1")?.lastUsed ?? 0) > 0);
  // A blob whose bytes are not its name: dropped with its entry and note.
  fs.writeFileSync(cache.blobs.pathOf(h), "garbage");
  fs.rmSync(dest);
  const bad = cache.restore("k1", store.cacheEntry("k1")!, dest, null, write);
  await bad.written;
  assert.equal(bad.restored, false);
  assert.equal(fs.existsSync(dest), false);
  assert.equal(store.cacheEntry("k1"), undefined);
  assert.equal(cache.lookup("k1"), undefined);
  // Clear: stats before and after.
  fs.writeFileSync(file, "other bytes");
  await cache.put("k3", "b.o", file, hashBytes(fs.readFileSync(file)), 11, write).written;
  fs.writeFileSync(notes, `${JSON.stringify({ f: "/src/a.c", h: "x" })}\n`);
  assert.deepEqual(cache.stats(), { entries: 1, blobs: 1, bytes: 11, units: 0 });
  assert.deepEqual(await cache.clear(), { cleared: 1, bytes: 11 });
  assert.deepEqual(cache.stats(), { entries: 0, blobs: 0, bytes: 0, units: 0 });
  assert.equal(cache.lookup("k3"), undefined);
  assert.equal(fs.existsSync(notes) ? fs.readFileSync(notes, "utf8") : "", "");
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test("cache gc evicts least recently used first and keeps blobs still referenced", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-gc-"));
  const store = Store.open({ path: path.join(dir, "store") });
  const blobs = new BlobDir(path.join(dir, "blobs"));
  const blob = (name: string, size: number) => {
    const f = path.join(dir, name);
    fs.writeFileSync(f, Buffer.alloc(size, name));
    const h = hashBytes(fs.readFileSync(f));
    blobs.put(f, h);
    return h;
  };
  const old = blob("old", 1000);
  const shared = blob("shared", 1000);
  const fresh = blob("fresh", 1000);
  await store.putCacheEntry("k-old", { native: old, size: 1000, object: "a.o", lastUsed: 1 });
  await store.putCacheEntry("k-shared-1", { native: shared, size: 1000, object: "b.o", lastUsed: 2 });
  await store.putCacheEntry("k-shared-2", { native: shared, size: 1000, object: "b.o", lastUsed: 9 });
  await store.putCacheEntry("k-fresh", { native: fresh, size: 1000, object: "c.o", lastUsed: 10 });
  const r = await new NativeCache(store, blobs).collectGarbage(2000);
  assert.equal(blobs.has(old), false, "the least recently used blob goes");
  assert.equal(blobs.has(shared), true, "a blob another entry still names stays");
  assert.equal(r.bytes, 2000);
  // Down to 1000: k-shared-1 goes but its blob must stay until k-shared-2 goes too.
  const r2 = await new NativeCache(store, blobs).collectGarbage(1000);
  assert.deepEqual(store.cacheEntries().map((e) => e.key).sort(), ["k-fresh"]);
  assert.equal(blobs.has(shared), false);
  assert.equal(blobs.has(fresh), true);
  assert.equal(r2.bytes, 1000);
  for (const { entry } of store.cacheEntries()) assert.ok(blobs.has(entry.native), "an entry names a missing blob");
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test("test files start children only through the bounded helpers (every spawn has a timeout)", () => {
  const dir = path.join(__dirname, "..", "..", "test");
  const offenders = fs.readdirSync(dir)
    .filter((f) => f.endsWith(".ts") && f !== "helpers.ts")
    .filter((f) => new RegExp(`from "node:${"child"}_process"|require\\("(node:)?${"child"}_process"\\)`).test(fs.readFileSync(path.join(dir, f), "utf8")));
  assert.deepEqual(offenders, []);
  assert.match(fs.readFileSync(path.join(dir, "helpers.ts"), "utf8"), /timeout, killSignal: "SIGKILL"/);
});

test("a child that hangs fails with its command line", async () => {
  const { spawnBounded, SpawnTimeout } = await import("./helpers");
  const t0 = Date.now();
  assert.throws(() => spawnBounded("sleep", ["30"], { timeout: 300 }), (e: unknown) => e instanceof SpawnTimeout && /timed out after 0 s: sleep 30/.test((e as Error).message));
  assert.ok(Date.now() - t0 < 10_000);
});

test("cache clear forgets every record a later build could reuse (natives, modules, files, thin-link, initcalls, link), and keeps the history", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-clear-"));
  const store = Store.open({ path: path.join(dir, "store") });
  await store.putCacheEntry("k", { native: "n", size: 1, object: "a.o", lastUsed: 1 });
  await store.commitBaseline([["/src/a.c", "h"]]);
  await store.putUnit("a.o", { key: "k", native: "n" } as unknown as UnitRecord);
  assert.equal(store.unitCount(), 1);
  for (const k of ["thinlink", "initcalls", "link", "lastOk", "feDirty", "kernelModules", "modulesFinal"] as const) await store.putMeta(k, { k } as never);
  await store.appendBuild({ id: 1, startedAt: 1, trigger: [], ok: true, report: reportJson() }, 50);
  await store.forgetBuildRecords();
  assert.equal(store.cacheCount(), 0);
  assert.equal(store.unitCount(), 0);
  assert.equal(store.baselineCount(), 0);
  for (const k of ["thinlink", "initcalls", "link", "lastOk", "feDirty", "kernelModules", "modulesFinal"] as const) assert.equal(store.getMeta(k), undefined, k);
  assert.equal(store.buildCount(), 1);
  await store.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a store of before the units/modules rename: its per-unit records move to units on open, the old database goes, and the read-through check covers it", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-migrate-"));
  const file = path.join(dir, "store");
  const rec = record(inputs());
  const { open } = await import("lmdb");
  const old = open({ path: file, compression: true, maxDbs: 8 });
  old.openDB({ name: "modules" }).putSync("kernel/fork.o", rec);
  old.openDB({ name: "meta" }).putSync("lastOk", true);
  await old.close();
  // The check reads the old database too: a record of the wrong shape there is found.
  assert.equal(Store.checkAll(file), 2);
  const store = Store.open({ path: file });
  assert.deepEqual(store.unit("kernel/fork.o"), rec);
  assert.equal(store.getMeta("lastOk"), true);
  await store.close();
  const raw = open({ path: file, compression: true, maxDbs: 8 });
  assert.deepEqual([...raw.getKeys()].filter((k) => k === "modules"), [], "the old database is still there");
  await raw.close();
  // Opened again: nothing to move, the records stay.
  const again = Store.open({ path: file });
  assert.equal(again.unitCount(), 1);
  await again.close();
  const bad = open({ path: path.join(dir, "bad"), compression: true, maxDbs: 8 });
  bad.openDB({ name: "modules" }).putSync("kernel/fork.o", { key: 1 });
  await bad.close();
  assert.throws(() => Store.checkAll(path.join(dir, "bad")), /modules record kernel\/fork\.o is not what ktld writes/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("change plan: a source only a kernel module ktld leaves to kbuild uses is reported as not handled, with what to run; a shared header also gets its FE jobs", () => {
  const g = new ObjectGraph("/b");
  g.set({ target: "kernel/fork.o", command: "clang -c -o kernel/fork.o kernel/fork.c", source: "kernel/fork.c", deps: ["include/linux/blk.h"], depsComplete: true } as unknown as CmdFile);
  const users = (f: string) => (f === "/b/drivers/block/loop.c" || f === "/b/include/linux/blk.h" ? ["loop"] : []);
  const only = planChanges([{ file: "/b/drivers/block/loop.c", kind: "changed" }], g, new Set(), users);
  assert.deepEqual(only.notHandled, ["drivers/block/loop.c changed (used by loop.ko, which ktld leaves to kbuild): run make modules"]);
  assert.equal(only.frontend.size, 0);
  assert.deepEqual(only.kbuild, []);
  const shared = planChanges([{ file: "/b/include/linux/blk.h", kind: "changed" }], g, new Set(), users);
  assert.deepEqual([...shared.frontend.keys()], ["kernel/fork.o"]);
  assert.equal(shared.notHandled.length, 1);
  assert.deepEqual(planChanges([{ file: "/b/kernel/fork.c", kind: "changed" }], g, new Set(), users).notHandled, []);
});

test("object graph: an object set again keeps its dependents as its new deps say (a header gone, one come, one kept), and the files list follows", () => {
  const g = new ObjectGraph("/b");
  const cmd = (target: string, source: string, deps: string[]) => ({ target, command: `clang -c -o ${target} ${source}`, source, deps, depsComplete: true }) as unknown as CmdFile;
  g.set(cmd("kernel/fork.o", "kernel/fork.c", ["include/a.h", "include/b.h"]));
  g.set(cmd("kernel/sys.o", "kernel/sys.c", ["include/b.h", "include/a.h", "include/b.h"]));
  assert.deepEqual(g.objectsUsing("/b/include/a.h"), ["kernel/fork.o", "kernel/sys.o"]);
  assert.deepEqual(g.objectsUsing("/b/include/b.h"), ["kernel/fork.o", "kernel/sys.o"], "a dep listed twice counts once");
  // fork.o's FE replay: a.h gone, c.h come, b.h kept.
  g.set(cmd("kernel/fork.o", "kernel/fork.c", ["include/b.h", "include/c.h"]));
  assert.deepEqual(g.objectsUsing("/b/include/a.h"), ["kernel/sys.o"]);
  assert.deepEqual(g.objectsUsing("/b/include/b.h"), ["kernel/fork.o", "kernel/sys.o"]);
  assert.deepEqual(g.objectsUsing("/b/include/c.h"), ["kernel/fork.o"]);
  g.set(cmd("kernel/sys.o", "kernel/sys.c", ["include/b.h"]));
  assert.deepEqual(g.objectsUsing("/b/include/a.h"), []);
  assert.deepEqual(g.files().sort(), ["/b/include/b.h", "/b/include/c.h", "/b/kernel/fork.c", "/b/kernel/sys.c"]);
});

test("file notes: last line wins, a line cut short is ignored, only changes are written, compaction keeps the live entries", async () => {
  const { FileNotes } = await import("../src/filenotes");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-notes-"));
  const file = path.join(dir, "files.log");
  const h = (c: string) => c.repeat(64);
  const n = new FileNotes(file);
  n.record(new Map([["/a.c", h("1")], ["/b.h", h("2")]]));
  n.record(new Map([["/a.c", h("3")], ["/b.h", h("2")]]));
  assert.equal(fs.readFileSync(file, "utf8").split("\n").filter(Boolean).length, 3, "an unchanged hash was written again");
  n.record(new Map([["/b.h", null]]));
  fs.appendFileSync(file, `${h("9")}\t/a.`); // a crash in the middle of a line
  const again = new FileNotes(file);
  assert.equal(again.get("/a.c"), h("3"));
  assert.equal(again.get("/b.h"), undefined);
  assert.equal(again.size, 1);
  const big = new Map<string, string>();
  for (let round = 0; round < 5; round++) {
    for (let i = 0; i < 1000; i++) big.set(`/f${i}.c`, h(String(round)));
    again.record(big);
  }
  const lines = fs.readFileSync(file, "utf8").split("\n").filter(Boolean).length;
  assert.ok(lines <= 4 * 1001 + 1000, `${lines} lines: never compacted`);
  const reread = new FileNotes(file);
  assert.equal(reread.get("/f7.c"), h("4"));
  assert.equal(reread.get("/a.c"), h("3"));
  fs.rmSync(dir, { recursive: true, force: true });
});

test("profile: time with no tool running is ktld's own, booked to the section it fell in; tool time per tool", async () => {
  const { startProfile, endProfile, section, toolRun } = await import("../src/base/profile");
  const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const p = startProfile();
  section("plan");
  await wait(60);
  const ended = toolRun("BE compile");
  await wait(60);
  const other = toolRun("objtool");
  await wait(30);
  ended();
  other();
  section("records");
  await wait(20);
  const r = endProfile(p);
  assert.ok(r.own.plan >= 50 && r.own.plan < 200, JSON.stringify(r));
  assert.ok(r.own.records >= 15, JSON.stringify(r));
  assert.ok(r.tools["BE compile"] >= 80 && r.tools.objtool >= 25 && r.tools.objtool < r.tools["BE compile"], JSON.stringify(r));
  // Overlapping tools count once in the tool time; wall = tools + own.
  assert.ok(r.toolMs >= 80 && r.toolMs < r.tools["BE compile"] + r.tools.objtool, JSON.stringify(r));
  assert.equal(r.wallMs, r.toolMs + r.ownMs);
  // Ended: nothing is booked to it any more, and a tool run then is not counted anywhere.
  const after = toolRun("late");
  after();
  assert.equal(endProfile(p).tools.late, undefined);
});

test("MODVERSIONS: kbuild's gen_symversions rebuilt from an object's recorded compile", async () => {
  const { exportsSymbols, genksymsCommand } = await import("../src/kbuild/symversions");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-symvers-"));
  try {
    const compile = "clang-19 -Wp,-MMD,kernel/.sys.o.d -nostdinc -I../include -DKBUILD_BASENAME='\"sys\"' -c -o kernel/sys.o ../kernel/sys.c";
    assert.equal(genksymsCommand(dir, "kernel/sys.o", compile, "../kernel/sys.c"),
      "clang-19 -nostdinc -I../include -DKBUILD_BASENAME='\"sys\"' -E -D__GENKSYMS__ ../kernel/sys.c | scripts/genksyms/genksyms -r /dev/null");
    // kbuild passes a .symref file when one exists next to the object.
    fs.mkdirSync(path.join(dir, "kernel"));
    fs.writeFileSync(path.join(dir, "kernel/sys.symref"), "");
    assert.match(genksymsCommand(dir, "kernel/sys.o", compile, "../kernel/sys.c")!, /genksyms -r kernel\/sys\.symref$/);
    // Not kbuild's C rule (an assembler source, a command of another shape): no command.
    assert.equal(genksymsCommand(dir, "lib/memcpy.o", "clang-19 -D__ASSEMBLY__ -c -o lib/memcpy.o lib/memcpy.S", "lib/memcpy.S"), undefined);
    assert.equal(genksymsCommand(dir, "kernel/sys.o", "clang-19 -c -o kernel/other.o ../kernel/sys.c", "../kernel/sys.c"), undefined);
    assert.equal(exportsSymbols("---------------- D __export_symbol_free_task\n"), true);
    assert.equal(exportsSymbols("---------------- T free_task\n"), false);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("blob dir: the kept total follows puts and removes and equals a fresh count", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-blobs-"));
  try {
    const blobs = new BlobDir(path.join(dir, "blobs"));
    assert.deepEqual(blobs.usage(), { bytes: 0, count: 0 });
    const files = [100, 2000, 30].map((n, i) => {
      const f = path.join(dir, `n${i}`);
      fs.writeFileSync(f, Buffer.alloc(n, i + 1));
      return { f, hash: hashBytes(fs.readFileSync(f)) };
    });
    for (const { f, hash } of files) assert.equal(blobs.put(f, hash), true);
    assert.equal(blobs.put(files[0].f, files[0].hash), true); // already there: not counted twice
    assert.deepEqual(blobs.usage(), { bytes: 2130, count: 3 });
    blobs.remove(files[1].hash);
    blobs.remove(files[1].hash); // gone already
    assert.deepEqual(blobs.usage(), { bytes: 130, count: 2 });
    assert.deepEqual(new BlobDir(path.join(dir, "blobs")).usage(), blobs.usage());
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("thin-link publish: only index files whose bytes changed move into place; the hash cache knows the moved ones without reading them", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-publish-"));
  const build = path.join(dir, "build");
  const stage = path.join(dir, "stage");
  fs.mkdirSync(build);
  fs.mkdirSync(stage);
  const objects = ["a.o", "b.o", "c.o"].map((p) => ({ path: p, bitcode: true, lazy: false }));
  const tree = { buildDir: build, objects, layout: { publishIndexList: () => undefined } } as unknown as KbuildTree;
  const put = (d: string, f: string, bytes: string) => fs.writeFileSync(path.join(d, f), bytes);
  for (const o of objects) {
    put(build, `${o.path}.thinlto.bc`, `index ${o.path}`);
    put(build, `${o.path}.imports`, "");
  }
  const hashes = new HashCache(build);
  for (const o of objects) hashes.get(`${o.path}.thinlto.bc`);
  // The thin-link writes every file again: a.o's index bytes change, b.o's do not; c.o's
  // index in place was rewritten behind the cache's back (same size, new bytes, new stat).
  put(stage, "a.o.thinlto.bc", "index a.o changed");
  put(stage, "b.o.thinlto.bc", "index b.o");
  put(stage, "c.o.thinlto.bc", "index c.o");
  for (const o of objects) put(stage, `${o.path}.imports`, "");
  put(stage, "vmlinux.thinlto-index", objects.map((o) => path.join(stage, o.path)).join("\n") + "\n");
  put(build, "c.o.thinlto.bc", "index c.X");
  const bMtime = fs.statSync(path.join(build, "b.o.thinlto.bc")).mtimeMs;
  hashes.newEpoch();
  const out = publishIndexFiles(tree, stage, hashes);
  assert.deepEqual(out.modules, ["a.o", "b.o", "c.o"]);
  assert.deepEqual([...out.changed].sort(), ["a.o", "c.o"]);
  assert.equal(fs.readFileSync(path.join(build, "a.o.thinlto.bc"), "utf8"), "index a.o changed");
  assert.equal(fs.readFileSync(path.join(build, "c.o.thinlto.bc"), "utf8"), "index c.o");
  assert.equal(fs.statSync(path.join(build, "b.o.thinlto.bc")).mtimeMs, bMtime, "an unchanged index keeps its mtime");
  // The cache answers for the moved file with its fresh bytes' hash (checked: right after a
  // new epoch it stats, finds the stat it remembered, and does not rehash).
  hashes.newEpoch();
  assert.equal(hashes.get("a.o.thinlto.bc"), hashBytes(Buffer.from("index a.o changed")));
  fs.rmSync(dir, { recursive: true, force: true });
});

test("boot verdict: a panic or oops line outranks the script's status; the status comes from the verdict port, not the console", async () => {
  const { decideVerdict, consoleVerdict } = await import("../src/boot");
  const boot = ["[    0.500000] Run /init as init process", "ktld: init: userspace reached"];
  assert.deepEqual(decideVerdict(boot, "KTLD-VERDICT exit 0\n", {}, true), { verdict: "pass", detail: "the script exited 0" });
  assert.deepEqual(decideVerdict(boot, "KTLD-VERDICT exit 3\n", {}, true), { verdict: "fail", detail: "the script exited 3" });
  // The script printing a verdict on the console is not a verdict.
  assert.equal(decideVerdict([...boot, "KTLD-VERDICT exit 0"], "", { timedOut: true }, true).verdict, "timeout");
  const panic = [...boot, "[    1.200000] Kernel panic - not syncing: ktld-boot-panic", "[    1.2] CPU: 0 PID: 1"];
  assert.deepEqual(decideVerdict(panic, "", {}, true), { verdict: "panic", detail: "Kernel panic - not syncing: ktld-boot-panic" });
  const oops = [...boot, "[    0.9] WARNING: CPU: 0 PID: 1 at kernel/sys.c:1000 __do_sys_getpid+0x10/0x20"];
  assert.equal(decideVerdict(oops, "KTLD-VERDICT exit 0\n", {}, true).verdict, "oops");
  assert.equal(consoleVerdict(["a WARNING: in the middle of a script's line"]), undefined, "only the kernel's own line starts");
  assert.equal(decideVerdict(boot, "KTLD-VERDICT exit 0\n", { cancelled: true }, true).verdict, "cancelled");
  assert.equal(decideVerdict([], "", { error: "qemu-system-x86_64: not found" }, false).verdict, "error");
  assert.deepEqual(decideVerdict(boot, "KTLD-VERDICT exit 0\n", {}, false), { verdict: "pass", detail: "booted to userspace" });
});

test("TUI timeline: done phases with their time, the running one so far, the rest with last build's time", async () => {
  const { timelineLine } = await import("../client/views");
  const last = { id: 1, startedAt: 0, trigger: [], ok: true, report: reportJson({ ok: true, frontend: { compiled: 1, ms: 1000 }, thinlink: { ms: 500 }, backend: { modules: 9, compiled: 2, cacheHits: 0, unchanged: 7, ms: 3000 }, link: { ms: 2000, skipped: false }, ms: 6500 }), boot: { ok: true, verdict: "pass", detail: "", ms: 4000, accel: "kvm", log: [] } };
  const live = { id: 2, phase: "thin-link", total: 1, done: 0, running: new Map(), phases: [{ phase: "FE", at: 0 }, { phase: "thin-link", at: 1200 }] };
  assert.equal(timelineLine(live, last, 200, 1500), "  FE 1.2s done > thin-link 0.3s… > BE (last 3.0s) > link (last 2.0s) > boot (last 4.0s)");
});

test("protocol: a request's arguments keep only what has the documented type", async () => {
  const { argsOf } = await import("../src/protocol");
  assert.deepEqual(argsOf("status", { history: 5, extra: 1 }), { history: 5 });
  assert.deepEqual(argsOf("status", { history: "5" }), {});
  assert.deepEqual(argsOf("status", { history: Number.NaN }), {});
  assert.deepEqual(argsOf("why", { object: "kernel/fork.o" }), { object: "kernel/fork.o" });
  assert.deepEqual(argsOf("log", null), {});
  assert.deepEqual(argsOf("build", [true]), {});
  assert.deepEqual(argsOf("build", { force: true }), { force: true });
});

test("boot initramfs: the files a script names come along (absolute at their path, relative under /ktld); system paths and missing files do not", async () => {
  const { namedFiles } = await import("../src/boot");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-named-"));
  fs.mkdirSync(path.join(dir, "t"));
  fs.writeFileSync(path.join(dir, "t/lib.sh"), "echo hi\n");
  const abs = path.join(dir, "abs.bin");
  fs.writeFileSync(abs, "x");
  const script = path.join(dir, "run.sh");
  const text = `#!/bin/sh\n. ./t/lib.sh\ncat ${abs}\n/bin/sh -c true\ncat ./t/missing\ncat /proc/modules ../escape\n`;
  const got = namedFiles(script, text).sort((a, b) => a.image.localeCompare(b.image));
  assert.deepEqual(got, [
    { host: abs, image: abs },
    { host: path.join(dir, "t/lib.sh"), image: "/ktld/t/lib.sh" },
  ].sort((a, b) => a.image.localeCompare(b.image)));
  fs.rmSync(dir, { recursive: true, force: true });
});

test("a store cut short anywhere is moved aside or used, never a crash: each database counted as well as read through", async () => {
  // A store shaped like a daemon's (many file hashes rewritten, cache entries), cut at 20
  // points near its end. Reading every record through passed for 3 of these cuts while
  // the next count or write died of SIGBUS (found by the 60-step soak).
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-cut-store-"));
  const storeJs = path.resolve(__dirname, "../src/store.js");
  const base = path.join(dir, "base");
  const fill = spawnBounded(process.execPath, ["-e", `
    const { Store } = require(${JSON.stringify(storeJs)});
    const s = Store.open({ path: ${JSON.stringify(base)} });
    const put = (r, v) => s.commitBaseline(Array.from({ length: 1500 }, (_, i) => ["arch/x86/include/asm/some_header_" + r + "_" + i + ".h", v.repeat(4)]));
    (async () => {
      for (let r = 0; r < 6; r++) await put(r, "0123456789abcdef");
      for (let i = 0; i < 600; i++) await s.putCacheEntry("k".repeat(40) + i, { native: "n".repeat(64), size: i });
      for (let r = 0; r < 3; r++) await put(r, "fedcba9876543210");
      await s.close();
    })();`], { encoding: "utf8", timeout: 60_000 });
  assert.equal(fill.status, 0, fill.stderr);
  const data = fs.statSync(base).isDirectory() ? "data.mdb" : "";
  const size = fs.statSync(path.join(base, data)).size;
  const outcomes: string[] = [];
  for (let k = 60; k < 80; k++) {
    const copy = path.join(dir, `cut-${k}`);
    fs.cpSync(base, copy, { recursive: true });
    fs.truncateSync(path.join(copy, data), Math.floor((size * k) / 80));
    // What a daemon does first: count, read, then write a lot.
    const r = spawnBounded(process.execPath, ["-e", `
      const { Store } = require(${JSON.stringify(storeJs)});
      const s = Store.open({ path: ${JSON.stringify(copy)}, log: (m) => console.log(m) });
      s.unitCount(); s.cacheCount(); s.baselineCount(); s.buildCount(); s.getMeta("lastOk");
      (async () => {
        await s.commitBaseline(Array.from({ length: 5000 }, (_, i) => ["new" + i, "x".repeat(64)]));
        await s.close();
      })();`], { encoding: "utf8", timeout: 60_000 });
    assert.equal(r.signal, null, `cut at ${k}/80: the store's user died of ${r.signal}\n${r.stdout}${r.stderr}`);
    assert.equal(r.status, 0, `cut at ${k}/80: ${r.stdout}${r.stderr}`);
    outcomes.push(/damaged/.test(r.stdout) ? "moved aside" : "used");
    fs.rmSync(copy, { recursive: true, force: true });
  }
  assert.ok(outcomes.includes("moved aside"), `no cut was noticed: ${outcomes.join(", ")}`);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("kernel modules from kbuild's records: a multi-object module's members and ld -r, a single-object module's bitcode file and compile-only command, a module without records left to kbuild", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-kmod-"));
  const write = (f: string, text: string | Buffer) => {
    fs.mkdirSync(path.dirname(path.join(dir, f)), { recursive: true });
    fs.writeFileSync(path.join(dir, f), text);
  };
  const bitcode = Buffer.from([0x42, 0x43, 0xc0, 0xde, 0, 0, 0, 0]);
  const compile = (obj: string, src: string, tail = "") =>
    `savedcmd_${obj} := clang-19 -Wp,-MMD,${path.dirname(obj)}/.${path.basename(obj)}.d -O2 -flto=thin -c -o ${obj} ${src}${tail}\n\nsource_${obj} := ${src}\n\ndeps_${obj} := \\\n  include/x.h \\\n\n${obj}: $(deps_${obj})\n\n$(deps_${obj}):\n`;
  write("modules.order", "fs/ext4/ext4.o\ndrivers/block/loop.o\nfs/vbox/vbox.o\n");
  write("fs/ext4/ext4.mod", "fs/ext4/inode.o\nfs/ext4/super.o\n");
  for (const m of ["inode", "super"]) {
    write(`fs/ext4/${m}.o`, bitcode);
    write(`fs/ext4/.${m}.o.cmd`, compile(`fs/ext4/${m}.o`, `../fs/ext4/${m}.c`));
  }
  write("fs/ext4/.ext4.o.cmd", "savedcmd_fs/ext4/ext4.o := ld.lld-19 -m elf_x86_64 -mllvm -import-instr-limit=5 -r -o fs/ext4/ext4.o @fs/ext4/ext4.mod  ; ./tools/objtool/objtool --link --module fs/ext4/ext4.o\n");
  write("drivers/block/loop.mod", "drivers/block/loop.o\n");
  write("drivers/block/loop.o", Buffer.from([0x7f, 0x45, 0x4c, 0x46]));
  write("drivers/block/.loop.o.cmd", compile("drivers/block/loop.o", "../drivers/block/loop.c",
    " ; ld.lld-19 -m elf_x86_64 -r -o drivers/block/.tmp_loop.o drivers/block/loop.o; mv drivers/block/.tmp_loop.o drivers/block/loop.o ; ./tools/objtool/objtool --link --module drivers/block/loop.o"));
  write("fs/vbox/vbox.mod", "fs/vbox/a.o\n");
  const unitOf = (object: string, bc: string, cmd: CmdFile) => ({ object: bc, cmd, compiler: "clang-19", backendFlags: [] });
  const { modules, units } = readKernelModules(dir, unitOf);
  fs.rmSync(dir, { recursive: true, force: true });
  const [ext4, loop, vbox] = modules;
  assert.equal(ext4.single, false);
  assert.deepEqual(ext4.members.map((m) => [m.object, m.bitcode, m.native]), [["fs/ext4/inode.o", "fs/ext4/inode.o", false], ["fs/ext4/super.o", "fs/ext4/super.o", false]]);
  assert.deepEqual(ext4.link?.ldArgv, ["ld.lld-19", "-m", "elf_x86_64", "-mllvm", "-import-instr-limit=5", "-r", "-o", "fs/ext4/ext4.o", "@fs/ext4/ext4.mod"]);
  assert.equal(ext4.link?.after, "./tools/objtool/objtool --link --module fs/ext4/ext4.o");
  assert.deepEqual(moduleLinkArgv(ext4, ["fs/ext4/inode.thinlto-native.o", "fs/ext4/super.thinlto-native.o"], "fs/ext4/ext4.o"),
    ["ld.lld-19", "-m", "elf_x86_64", "-mllvm", "-import-instr-limit=5", "-r", "-o", "fs/ext4/ext4.o", "fs/ext4/inode.thinlto-native.o", "fs/ext4/super.thinlto-native.o"]);
  const thin = moduleThinLinkArgv(ext4, "/s", "/s/list");
  assert.deepEqual(thin.slice(0, 8), ["ld.lld-19", "-m", "elf_x86_64", "-mllvm", "-import-instr-limit=5", "-r", "fs/ext4/inode.o", "fs/ext4/super.o"]);
  assert.ok(thin.includes("--thinlto-index-only=/s/list") && thin.includes("--thinlto-prefix-replace=;/s/"), thin.join(" "));
  // A single-object module: kbuild links it in place, so its bitcode is ktld's own file.
  assert.equal(loop.single, true);
  assert.deepEqual(loop.members.map((m) => m.bitcode), ["drivers/block/.loop.ktld-bitcode.o"]);
  assert.deepEqual(loop.link?.ldArgv.slice(-3), ["-o", "drivers/block/.tmp_loop.o", "drivers/block/loop.o"]);
  assert.equal(loop.link?.after, "./tools/objtool/objtool --link --module drivers/block/loop.o", "the mv step is kbuild's own, not ktld's");
  assert.deepEqual(moduleLinkArgv(loop, ["n.o"], "drivers/block/loop.o").slice(-3), ["-o", "drivers/block/loop.o", "n.o"]);
  const single = singleCompileCommand(units.get("drivers/block/.loop.ktld-bitcode.o")!.cmd, "drivers/block/.loop.ktld-bitcode.o");
  assert.equal(single, "clang-19 -Wp,-MMD,drivers/block/.loop.o.d -O2 -flto=thin -c -o drivers/block/.loop.ktld-bitcode.o ../drivers/block/loop.c");
  assert.deepEqual([...units.keys()].sort(), ["drivers/block/.loop.ktld-bitcode.o", "fs/ext4/inode.o", "fs/ext4/super.o"]);
  // No records: not misread, left to kbuild with a reason.
  assert.equal(vbox.link, undefined);
  assert.match(vbox.unplaced ?? "", /^vbox\.ko: a member has no \.cmd record; left to kbuild \(make modules\)$/);
  assert.deepEqual(readKernelModules(path.join(os.tmpdir(), "ktld-no-such-dir")).modules, []);
});

test("archive commands run into a temp file beside the target: every mention of the target as a word, never a longer path that ends in it", () => {
  const vm = "rm -f vmlinux.a; llvm-ar-19 cDPrST vmlinux.a ./built-in.a; llvm-ar-19 mPiT $(llvm-ar-19 t vmlinux.a | sed -n 1p) vmlinux.a $(llvm-ar-19 t vmlinux.a | grep -F -f ./scripts/head-object-list.txt)";
  const r = intoTemp(vm, "vmlinux.a");
  assert.equal(r.tmp, "vmlinux.a.ktld-tmp");
  assert.equal(r.command, vm.replaceAll(" vmlinux.a", " vmlinux.a.ktld-tmp"));
  const top = intoTemp("rm -f built-in.a; printf 'kernel/built-in.a\\n' | xargs llvm-ar-19 cDPrST built-in.a", "built-in.a");
  assert.equal(top.command, "rm -f built-in.a.ktld-tmp; printf 'kernel/built-in.a\\n' | xargs llvm-ar-19 cDPrST built-in.a.ktld-tmp");
  assert.deepEqual(intoTemp("true", "built-in.a"), { command: "true" });
});

test("boot plan: a new kernel is booted; a cancelled boot whose build made nothing new boots the kernel on disk again; a failed build boots nothing", () => {
  const base = { build: 9, ok: true, newKernel: false, due: false, booting: false };
  assert.deepEqual(planBoot({ ...base, newKernel: true }).boot, 9);
  assert.deepEqual(planBoot({ ...base, newKernel: true, due: true }).boot, 9);
  // Nothing new and nothing cancelled: the running boot (or the last verdict) stands.
  assert.equal(planBoot(base).boot, undefined);
  assert.equal(planBoot({ ...base, booting: true }).boot, undefined);
  const again = planBoot({ ...base, due: true });
  assert.equal(again.boot, 9);
  assert.match(again.reason, /again .*build #9 made nothing new/);
  const failed = planBoot({ ...base, ok: false, newKernel: true, due: true });
  assert.equal(failed.boot, undefined);
  assert.match(failed.reason, /build #9 failed/);
});

test("boot plan: a new kernel is a vmlinux link that ran or a .ko kbuild's final link wrote", () => {
  const r = (link: { ms: number; skipped: boolean }, steps?: string[]) => ({ ok: true, link, modulesFinal: steps && { ms: 1, steps } });
  assert.equal(madeNewKernel(r({ ms: 900, skipped: false })), true);
  assert.equal(madeNewKernel(r({ ms: 2, skipped: true })), false);
  assert.equal(madeNewKernel(r({ ms: 0, skipped: false })), false);
  assert.equal(madeNewKernel(r({ ms: 2, skipped: true }, ["MODPOST Module.symvers"])), false);
  assert.equal(madeNewKernel(r({ ms: 2, skipped: true }, ["MODPOST Module.symvers", "LD [M]  fs/ext4/ext4.ko"])), true);
  assert.equal(madeNewKernel({ ...r({ ms: 900, skipped: false }), ok: false }), false);
});

test("ktld why vmlinux: the newest build that relinked, its thin-link, BE and link decisions; the newer builds that kept it say why", () => {
  const entry = (id: number, ok: boolean, link: { skipped: boolean; reason?: string } | undefined, thinlink?: { skipped: boolean; reason?: string; indexChanged?: number }) =>
    ({ id, startedAt: id, trigger: [`f${id}.c`], ok, report: reportJson({ link, thinlink, backend: { units: 9, compiled: id, unchanged: 9 - id } }) });
  const history = [
    entry(7, true, { skipped: true, reason: "every input as the last link read it" }, { skipped: true, reason: "no object changed" }),
    entry(6, false, { skipped: false, reason: "a native changed" }),
    entry(5, true, { skipped: false, reason: "kernel/fork.thinlto-native.o changed" }, { skipped: false, reason: "kernel/fork.o changed", indexChanged: 3 }),
    entry(4, true, { skipped: false, reason: "no record" }),
  ];
  const none = () => undefined;
  const w = why("vmlinux", history, none);
  assert.equal(w.build, 5, "a failed build's link is not the kernel's");
  assert.deepEqual(w.trigger, ["f5.c"]);
  assert.deepEqual(w.thinlink, { ms: 0, skipped: false, reason: "kernel/fork.o changed", indexChanged: 3 });
  assert.deepEqual(w.link, { ms: 0, skipped: false, reason: "kernel/fork.thinlto-native.o changed" });
  assert.deepEqual(w.steps, [
    { step: "thin-link", ran: true, reason: "kernel/fork.o changed" },
    { step: "BE", ran: true, reason: "5 compiled, 0 from the cache, 4 of 9 unchanged" },
    { step: "link", ran: true, reason: "kernel/fork.thinlto-native.o changed" },
  ]);
  assert.deepEqual(w.kept, { build: 7, reason: "every input as the last link read it" });
  assert.match(whyText(w).join("\n"), /^vmlinux: relinked by build #5 .*\n {2}thin-link: ran: kernel\/fork\.o changed \(3 index files changed\)\n {2}BE: ran: .*\n {2}link: ran: .*\n {2}kept since: build #7/);
  assert.equal(why("vmlinux", history.slice(2), none).kept, undefined);
  const never = why("vmlinux.o", history.slice(0, 2), none);
  assert.equal(never.build, null);
  assert.match(never.reason ?? "", /not relinked/);
  assert.equal(never.kept?.build, 7);
  assert.equal(why("vmlinux", [], none).build, null);
});

test("ktld why a unit and a kernel module: FE, the target's thin-link, the unit's BE, the link; the module's steps and kbuild's module steps", () => {
  const vmlinuxBuild = {
    id: 3, startedAt: 3, trigger: ["kernel/fork.c"], ok: true,
    report: reportJson({
      frontendJobs: [{ object: "kernel/fork.o", reason: "source kernel/fork.c changed", changed: true }, { object: "kernel/exit.o", reason: "header changed", changed: false }],
      thinlink: { skipped: false, reason: "an object it reads changed" },
      backend: { units: 9, compiled: 1, jobs: [{ object: "kernel/fork.o", action: "compile", reason: "bitcode changed" }] },
      link: { skipped: false, reason: "an input or its command changed" },
    }),
  };
  const moduleBuild = {
    id: 4, startedAt: 4, trigger: ["fs/ext4/inode.c"], ok: true,
    report: reportJson({
      frontendJobs: [{ object: "fs/ext4/inode.o", reason: "source fs/ext4/inode.c changed", changed: true }],
      thinlink: { skipped: true }, link: { skipped: true },
      kernelModules: [{
        name: "ext4", ko: "fs/ext4/ext4.ko", reason: "fs/ext4/inode.o changed", bitcode: 0,
        thinlink: { ms: 1, skipped: false, indexChanged: 2, reason: "an object it reads changed" },
        backend: { units: 30, modules: 30, compiled: 2, cacheHits: 0, sharedHits: 0, unchanged: 28, ms: 5, jobs: [{ object: "fs/ext4/inode.o", action: "compile", reason: "bitcode changed" }] },
        link: { ms: 1, skipped: false, reason: "an input or its command changed" },
      }],
      modulesFinal: { ms: 9, steps: ["LD [M]  fs/ext4/ext4.ko"], reason: "1 module object(s) relinked" },
    }),
  };
  const history = [moduleBuild, vmlinuxBuild];
  const ext4 = (o: string) => (o.startsWith("fs/ext4/") ? { name: "ext4", whole: o === "fs/ext4/ext4.ko" || o === "fs/ext4/ext4.o", unit: o } : undefined);
  const fork = why("kernel/fork.o", history, ext4);
  assert.equal(fork.build, 3);
  assert.deepEqual(fork.steps.map((s) => `${s.step} ${s.ran ? "ran" : "kept"}: ${s.reason}`), [
    "FE ran: source kernel/fork.c changed",
    "thin-link ran: an object it reads changed",
    "BE ran: compiled: bitcode changed",
    "link ran: an input or its command changed",
  ]);
  // Bitcode unchanged: the unit went no further than its FE.
  assert.deepEqual(why("kernel/exit.o", history, ext4).steps.map((s) => s.step), ["FE"]);
  const ko = why("fs/ext4/ext4.ko", history, ext4);
  assert.equal(ko.build, 4);
  assert.equal(ko.kernelModule?.name, "ext4");
  assert.deepEqual(ko.steps.map((s) => `${s.step} ${s.ran ? "ran" : "kept"}: ${s.reason}`), [
    "thin-link ran: an object it reads changed",
    "BE ran: 2 compiled, 0 from the cache, 28 of 30 unchanged",
    "link ran: an input or its command changed",
    "modules ran: kbuild's module steps ran: 1 module object(s) relinked (1 steps)",
  ]);
  const inode = why("fs/ext4/inode.o", history, ext4);
  assert.deepEqual(inode.steps.map((s) => s.step), ["FE", "thin-link", "BE", "link", "modules"]);
  assert.match(inode.steps[2].reason, /compiled: bitcode changed/);
  assert.equal(why("mm/slub.o", history, ext4).build, null);
});

test("link split: link-vmlinux.sh's traced commands named by step, each timed until the next starts", () => {
  assert.equal(stepOf("ld.lld-19 -m elf_x86_64 --script=./arch/x86/kernel/vmlinux.lds --strip-debug -o .tmp_vmlinux2 --whole-archive vmlinux.o"), "LD .tmp_vmlinux2 (no debug info)");
  assert.equal(stepOf("ld.lld-19 -m elf_x86_64 --script=./arch/x86/kernel/vmlinux.lds -o vmlinux --whole-archive vmlinux.o"), "LD vmlinux");
  assert.equal(stepOf("LLVM_OBJCOPY=llvm-objcopy-19 pahole -J --btf_gen_floats -j .tmp_vmlinux1"), "BTF: pahole -J");
  assert.equal(stepOf("llvm-nm-19 -n .tmp_vmlinux1"), "NM (System.map, kallsyms input)");
  assert.equal(stepOf("llvm-nm-19 -S vmlinux"), "SORTTAB");
  assert.equal(stepOf("is_enabled CONFIG_KALLSYMS"), undefined);
  const trace = parseTrace([
    { at: 10, line: "+ ld.lld-19 -o .tmp_vmlinux1 vmlinux.o" },
    { at: 10.5, line: "not a trace line" },
    { at: 11, line: "++ LLVM_OBJCOPY=x pahole -J .tmp_vmlinux1" },
    { at: 14, line: "+ is_enabled CONFIG_KALLSYMS" },
  ]);
  assert.deepEqual(trace.map((t) => t.at), [10, 11, 14]);
  assert.deepEqual([...splitTimes(trace, 14.5)], [["LD .tmp_vmlinux1", 1], ["BTF: pahole -J", 3], ["the script's own commands", 0.5]]);
});

test("link steps: kbuild's step lines name the steps of its final link, and the clock times each until the next", async () => {
  const { kbuildStepOf, StepClock } = await import("../src/stepclock");
  assert.equal(kbuildStepOf("  LD      .tmp_vmlinux1"), "LD .tmp_vmlinux1");
  assert.equal(kbuildStepOf("  BTF     .btf.vmlinux.bin.o"), "BTF .btf.vmlinux.bin.o");
  assert.equal(kbuildStepOf("  LD [M]  fs/ext4/ext4.ko"), "LD [M] fs/ext4/ext4.ko");
  for (const l of ["make[1]: Entering directory '/x'", "die__process_unit: DW_TAG_label (0xa) @ <0x1> not handled!", "LD vmlinux", "  ld.lld: warning: x"]) assert.equal(kbuildStepOf(l), undefined, l);
  const events: string[] = [];
  const clock = new StepClock((name, ms) => events.push(ms === undefined ? `start ${name}` : `end ${name}`));
  await clock.time("LD vmlinux.o", () => new Promise((r) => setTimeout(r, 20)));
  clock.mark("LD .tmp_vmlinux1");
  await new Promise((r) => setTimeout(r, 20));
  clock.mark("BTF .btf.vmlinux.bin.o");
  clock.endMark();
  assert.deepEqual(events, ["start LD vmlinux.o", "end LD vmlinux.o", "start LD .tmp_vmlinux1", "end LD .tmp_vmlinux1", "start BTF .btf.vmlinux.bin.o", "end BTF .btf.vmlinux.bin.o"]);
  assert.deepEqual(clock.steps.map((s) => s.name), ["LD vmlinux.o", "LD .tmp_vmlinux1", "BTF .btf.vmlinux.bin.o"]);
  assert.ok(clock.steps[0].ms >= 15 && clock.steps[1].ms >= 15, JSON.stringify(clock.steps));
});

test("demo progress: ktld's [k/N] lines and kbuild's step lines become one updating line, clipped to the terminal", async () => {
  const { progressOf, statusLine } = await import("../scripts/progress");
  assert.deepEqual(progressOf("  LTO     kernel/fork.o [3/12]"), { done: 3, total: 12 });
  assert.equal(progressOf("  CC      kernel/fork.o"), undefined);
  assert.equal(statusLine("ktld build", 7, "  LTO     kernel/fork.o [3/12]", 80), "ktld build [3/12] LTO kernel/fork.o");
  assert.equal(statusLine("make", 1234, "  CC [M]  fs/ext4/inode.o", 80), "make [1234] CC [M] fs/ext4/inode.o");
  const long = statusLine("make", 1, `  CC      ${"d/".repeat(60)}x.o`, 40);
  assert.equal(long.length, 40);
  assert.ok(long.endsWith("…"));
});

test("BTF plan: a kept .BTF is reused only when every changed object's types and functions and vmlinux's symbols are as they were; an earlier one when now is its state", async () => {
  const { pickBtf, planBtf } = await import("../src/btf");
  // The record as ktld hands it over: the superset BTF filled in where an object differs.
  const last = { pahole: "pahole -J --btf_gen_floats", symbols: "S", btf: "B", inputs: [{ path: "a.o", hash: "a1", sbtf: "A" }, { path: "b.o", hash: "b1" }, { path: "c.o", hash: "c1", sbtf: "C" }] };
  const now = (over: Partial<{ pahole: string; symbols: string }> = {}, inputs: { path: string; hash: string; sbtf?: string }[] = [{ path: "a.o", hash: "a2", sbtf: "A" }, { path: "b.o", hash: "b1" }, { path: "c.o", hash: "c2", sbtf: "C" }]) =>
    ({ pahole: last.pahole, symbols: "S", inputs, ...over });
  assert.deepEqual(planBtf(last, now()), { run: false, reason: "2 changed object(s) have the types and functions they had, and vmlinux's function and per-CPU symbols are as they were" });
  assert.match(planBtf(undefined, now()).reason, /no BTF on record/);
  assert.match(planBtf(last, now({ pahole: "pahole -J" })).reason, /pahole or its arguments changed/);
  assert.match(planBtf(last, now({ symbols: "T" })).reason, /symbols pahole reads changed/);
  assert.match(planBtf(last, now({}, [{ path: "b.o", hash: "b1" }, { path: "a.o", hash: "a1" }, { path: "c.o", hash: "c1" }])).reason, /added, removed or reordered/);
  const changedTypes = planBtf(last, now({}, [{ path: "a.o", hash: "a2", sbtf: "A2" }, { path: "b.o", hash: "b1" }, { path: "c.o", hash: "c1" }]));
  assert.deepEqual(changedTypes, { run: true, reason: "the types or functions of a.o changed" });
  assert.match(planBtf(last, now({}, [{ path: "a.o", hash: "a1" }, { path: "b.o", hash: "b2", sbtf: "X" }, { path: "c.o", hash: "c1" }])).reason, /no record of the types and functions of b\.o/);
  assert.match(planBtf(last, now({}, [{ path: "a.o", hash: "a2" }, { path: "b.o", hash: "b1" }, { path: "c.o", hash: "c1" }])).reason, /could not be read/);
  // A debug print added (a.o's types changed: pahole ran, record r0) and taken out again:
  // now is r1's state, whose .BTF is picked; with neither, the newest record's reason.
  const r0 = { ...last, btf: "B0", inputs: [{ path: "a.o", hash: "a9", sbtf: "A9" }, ...last.inputs.slice(1)] };
  const back = now({}, [{ path: "a.o", hash: "a1", sbtf: "A" }, { path: "b.o", hash: "b1" }, { path: "c.o", hash: "c1" }]);
  assert.deepEqual(pickBtf([r0, last], back), { index: 1, reason: "0 changed object(s) have the types and functions they had, and vmlinux's function and per-CPU symbols are as they were (the .BTF of an earlier link, 1 back)" });
  assert.deepEqual(pickBtf([r0, last], now({}, [{ path: "a.o", hash: "a7", sbtf: "A7" }, { path: "b.o", hash: "b1" }, { path: "c.o", hash: "c1" }])), { index: -1, reason: "the types or functions of a.o changed" });
  assert.equal(pickBtf([], back).index, -1);
});

test("BTF of a print added: an object whose encoding differs only in simple types (a string's char[N], char moved up) that an earlier object has is shown the same, and pahole over a link with that object first agrees byte for byte; with a length no earlier object has, or the earlier object after it, it is not, and pahole's .BTF differs too", async () => {
  const { simpleClassesOfObject, supersetBtf, planBtf } = await import("../src/btf");
  const { parseBtf, sameUpToEarlierSimpleTypes, simpleClasses } = await import("../src/btftypes");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-btf-simple-"));
  const obj = (name: string, src: string) => {
    fs.writeFileSync(path.join(dir, `${name}.c`), `extern int puts(const char *);\n${src}`);
    execBounded("clang-19", ["-g", "-O2", "-c", "-o", `${name}.o`, `${name}.c`], { cwd: dir });
    return path.join(dir, `${name}.o`);
  };
  // clang 19 gives each string literal an anonymous variable of type char[N] in the DWARF.
  const early = obj("early", `int early(void) { return puts("0123456789ab"); }\n`);
  const unit = (extra: string) => `struct s { int a; char *p; };\nint use(struct s *x) { return puts("abc")${extra} + x->a; }\n`;
  const k0 = obj("k0", unit(""));
  const k1 = obj("k1", unit(` + puts("0123456789ab")`));
  const k2 = obj("k2", unit(` + puts("0123456789abcdefg")`));
  const tools = { pahole: "pahole", pfunct: "pfunct", objcopy: "llvm-objcopy-19", flags: ["--btf_gen_floats"] };
  const enc = async (o: string) => {
    const keep = `${o}.kept.btf`;
    await supersetBtf(o, tools, dir, undefined, keep);
    return parseBtf(fs.readFileSync(keep));
  };
  const [e0, e1, e2] = [await enc(k0), await enc(k1), await enc(k2)];
  assert.ok(e1.some((t) => t.kind === 3 && t.data[0] === 13), "k1's encoding has no char[13]: clang gave the string no DWARF variable");
  assert.notDeepEqual(e0, e1, "the print changed nothing in the encoding: nothing to show");
  const earlyClasses = await simpleClassesOfObject(early, tools, dir);
  const earlier = (sets: ReadonlySet<string>[]) => async (i: number) => sets[i];
  assert.deepEqual(await sameUpToEarlierSimpleTypes(e0, e1, earlier([earlyClasses])), { same: true, witnesses: [0] });
  assert.deepEqual(await sameUpToEarlierSimpleTypes(e0, e1, earlier([])), { same: false, reason: "simple types changed that no earlier object has" });
  assert.deepEqual(await sameUpToEarlierSimpleTypes(e0, e2, earlier([earlyClasses])), { same: false, reason: "simple types changed that no earlier object has" });
  // The last .BTF (here: the classes of early and k0) lacks the char[18] k2 brings: no
  // earlier object can have it, said without reading one.
  const lastBtf = new Set([...earlyClasses, ...simpleClasses(e0)]);
  assert.deepEqual(await sameUpToEarlierSimpleTypes(e0, e2, async () => assert.fail("an earlier object was read"), () => lastBtf), { same: false, reason: "it brings a simple type that the last .BTF does not have, so no earlier object has it" });
  assert.deepEqual(await sameUpToEarlierSimpleTypes(e0, e1, earlier([earlyClasses]), () => lastBtf), { same: true, witnesses: [0] });
  // Two objects in one (ld -r): two compile units with no reference across them, which pahole
  // encodes one by one, the first one's functions before the second one's types: refused.
  const two = path.join(dir, "two.o");
  execBounded("ld.lld-19", ["-r", "-o", two, early, k0], { cwd: dir });
  await assert.rejects(supersetBtf(two, tools, dir), /pahole encodes its compile units one by one/);
  // A new field is no simple type: no earlier object can make it the same.
  const e3 = await enc(obj("k3", unit("").replace("char *p;", "char *p; long q;")));
  assert.match((await sameUpToEarlierSimpleTypes(e0, e3, earlier([earlyClasses])) as { reason: string }).reason, /^a type or function that is not simple changed$/);
  // The reference: pahole over an image of the objects in link order, as link-vmlinux.sh runs it.
  const btfOf = (...objs: string[]) => {
    const img = path.join(dir, `img-${objs.map((o) => path.basename(o, ".o")).join("-")}.o`);
    execBounded("ld.lld-19", ["-r", "-o", img, ...objs], { cwd: dir });
    execBounded("pahole", ["-J", "--btf_gen_floats", img], { cwd: dir, stdio: "ignore" });
    execBounded("llvm-objcopy-19", [`--dump-section=.BTF=${img}.btf`, img], { cwd: dir });
    return fs.readFileSync(`${img}.btf`);
  };
  assert.ok(btfOf(early, k0).equals(btfOf(early, k1)), "pahole made another .BTF of the print added after an object with its char[N]");
  assert.ok(!btfOf(early, k0).equals(btfOf(early, k2)), "a char[N] no earlier object has left pahole's .BTF as it was: the test shows nothing");
  assert.ok(!btfOf(k0, early).equals(btfOf(k1, early)), "with the object that has char[13] after it, pahole's .BTF did not change: the order shows nothing");
  // The BTF step as a link prepares it: k.o was k0 (the record, its bytes in the native cache),
  // is k1 now; early.o, the same, is the witness, its classes kept for the next link. A kept
  // classes file cut in half is read again, never taken.
  {
    const { hashFile } = await import("../src/base/hash");
    const { prepareBtf } = await import("../src/btf");
    const build = path.join(dir, "build");
    fs.mkdirSync(build);
    fs.copyFileSync(early, path.join(build, "early.o"));
    fs.copyFileSync(k1, path.join(build, "k.o"));
    const [he, h0] = [hashFile(early)!, hashFile(k0)!];
    const record = { pahole: "p", symbols: "S", btf: "none", inputs: [{ path: "early.o", hash: he, sbtf: await supersetBtf(early, tools, dir) }, { path: "k.o", hash: h0, sbtf: await supersetBtf(k0, tools, dir) }] };
    const prepare = async () => {
      const step = await prepareBtf({
        buildDir: build, stateDir: path.join(dir, "state"), env: { PAHOLE_FLAGS: "--btf_gen_floats", OBJCOPY: "llvm-objcopy-19" }, config: new Map([["CONFIG_DEBUG_INFO_BTF", "y"]]),
        inputs: ["early.o", "k.o"], hashOf: (p) => hashFile(path.join(build, p)), blobOf: (h) => (h === h0 ? k0 : undefined), records: [record], btfFromFirstLink: true,
      });
      assert.ok("plan" in step, JSON.stringify(step));
      return step.plan.inputs[1];
    };
    const first = await prepare();
    assert.deepEqual(first.sameTypes, [{ was: h0, witnesses: [{ index: 0, hash: he }] }], JSON.stringify(first));
    const keptClasses = path.join(dir, "state", "btf", "classes", `${he}.json`);
    const whole = fs.readFileSync(keptClasses);
    fs.truncateSync(keptClasses, Math.floor(whole.length / 2));
    assert.deepEqual((await prepare()).sameTypes, first.sameTypes);
    assert.ok(fs.readFileSync(keptClasses).equals(whole), "the damaged classes file was not written again whole");
  }
  // The planner takes it as the same only with its witnesses as they were in the record.
  const rec = { pahole: "p", symbols: "S", btf: "B", inputs: [{ path: "early.o", hash: "h0", sbtf: "E" }, { path: "k.o", hash: "k0", sbtf: "K0" }] };
  const sameTypes = [{ was: "k0", witnesses: [{ index: 0, hash: "h0" }] }];
  const now = (earlyHash: string) => ({ pahole: "p", symbols: "S", inputs: [{ path: "early.o", hash: earlyHash, sbtf: "E" }, { path: "k.o", hash: "k1", sbtf: "K1", sameTypes }] });
  assert.match(planBtf(rec, now("h0")).reason, /^1 changed object\(s\) have the types and functions they had \(up to simple types that objects before them have: k\.o \(early\.o\)\)/);
  assert.equal(planBtf(rec, now("h0")).run, false);
  // The earlier object's bytes changed (its types did not): it is no witness for this record.
  assert.deepEqual(planBtf(rec, now("h9")), { run: true, reason: "the types or functions of k.o changed" });
  fs.rmSync(dir, { recursive: true, force: true });
});

test("BTF inputs: the superset BTF sees a changed prototype of a function inlined away (pahole's own encoding of the object does not); the symbol key sees functions and per-CPU variables, not bodies", async () => {
  const { btfSymbolsKey, supersetBtf } = await import("../src/btf");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-btf-"));
  const obj = (name: string, src: string) => {
    fs.writeFileSync(path.join(dir, `${name}.c`), src);
    execBounded("clang-19", ["-g", "-O2", "-c", "-o", `${name}.o`, `${name}.c`], { cwd: dir });
    return path.join(dir, `${name}.o`);
  };
  const prog = (sq: string, body: string, extra = "", call = "sq(y)") => `${sq} { return x * x; }\n__attribute__((section(".data..percpu"))) int pcpu_a = 1;\nint f(int y) { return ${call} + ${body}; }\n${extra}`;
  const a = obj("a", prog("static inline int sq(int x)", "1"));
  // One more parameter, of a type the object has anyway.
  const b = obj("b", prog("static inline int sq(int x, int unused)", "1", "", "sq(y, 0)"));
  const c = obj("c", prog("static inline int sq(int x)", "2"));
  const d = obj("d", prog("static inline int sq(int x)", "1", "int g(int z) { return z; }\n"));
  const e = obj("e", prog("static inline int sq(int x)", "1", "__attribute__((section(\".data..percpu\"))) int pcpu_b = 2;\n"));
  assert.doesNotMatch(execBounded("llvm-nm-19", [a], { encoding: "utf8" }), / sq$/m, "sq was not inlined away");
  const plain = (f: string) => {
    execBounded("pahole", ["-J", "--btf_gen_floats", `--btf_encode_detached=${f}.btf`, f], { cwd: dir, stdio: "ignore" });
    return hashFile(`${f}.btf`);
  };
  assert.equal(plain(a), plain(b), "pahole's own encoding of the object saw the inlined function's prototype: the superset is not needed");
  const tools = { pahole: "pahole", pfunct: "pfunct", objcopy: "llvm-objcopy-19", flags: ["--btf_gen_floats", "-j"] };
  const sa = await supersetBtf(a, tools, dir);
  assert.notEqual(await supersetBtf(b, tools, dir), sa, "the superset missed sq's new prototype");
  assert.equal(await supersetBtf(c, tools, dir), sa, "a body edit changed the superset");
  assert.notEqual(await supersetBtf(d, tools, dir), sa, "a new function did not change the superset");
  assert.equal(btfSymbolsKey(c), btfSymbolsKey(a));
  assert.notEqual(btfSymbolsKey(d), btfSymbolsKey(a), "a new function symbol did not change the key");
  assert.notEqual(btfSymbolsKey(e), btfSymbolsKey(a), "a new per-CPU variable did not change the key");
  // ThinLTO's promoted locals are renamed with their unit's hash (`f.llvm.NNN`): no C function
  // has such a name, so pahole never matches one, and the key does not see it.
  const renamed = (n: string) => {
    execBounded("llvm-objcopy-19", [`--add-symbol=helper.llvm.${n}=0,function,global`, a, path.join(dir, `r${n}.o`)], { cwd: dir });
    return btfSymbolsKey(path.join(dir, `r${n}.o`));
  };
  assert.equal(renamed("111"), renamed("222"));
  assert.equal(renamed("111"), btfSymbolsKey(a));
  fs.rmSync(dir, { recursive: true, force: true });
});

test("BTF inputs: a bitcode unit without functions (6.12's .vmlinux.export.o, init/version-timestamp.o) has a superset BTF read from its debug metadata: the same after exports added or a banner's time of the same length, not after one of another length; the same is true of pahole's encoding of an image with it; a unit with a function is not read", async () => {
  const { supersetBtf, llvmToolBeside } = await import("../src/btf");
  assert.equal(llvmToolBeside("llvm-objcopy-19", "llvm-dis"), "llvm-dis-19");
  assert.equal(llvmToolBeside("/usr/lib/llvm-19/bin/llvm-objcopy", "llvm-dis"), "/usr/lib/llvm-19/bin/llvm-dis");
  assert.equal(llvmToolBeside("objcopy", "llvm-dis"), undefined);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-btf-bc-"));
  try {
    const cc = (name: string, src: string, flags: string[]) => {
      fs.writeFileSync(path.join(dir, `${name}.c`), src);
      execBounded("clang-19", ["-g", "-gdwarf-5", "-O2", ...flags, "-c", "-o", `${name}.o`, `${name}.c`], { cwd: dir });
      return path.join(dir, `${name}.o`);
    };
    // Exports as 6.12's .vmlinux.export.c writes them: asm only (the KSYMTAB and CRC macros).
    const exports = (names: string[]) => names.map((n) => `asm(".section \\"___ksymtab+${n}\\", \\"a\\"\\n.long 0\\n.previous");\n`).join("");
    // A banner and a struct as init/version-timestamp.c has them; the file is rewritten with
    // another UTS_VERSION, as kbuild's link does (the source's MD5 changes with it).
    const version = (uts: string) => `struct uts { char version[65]; int n; };\nstruct uts init_uts = { .version = "${uts}", .n = 2 };\nconst char banner[] = "Linux version ${uts}\\n";\n`;
    // Each state of one source file, compiled under its name (the debug info names it), kept aside.
    const state = (src: string, name: string, as: string) => {
      const kept = path.join(dir, `${as}.bc`);
      fs.renameSync(cc(name, src, ["-flto=thin"]), kept);
      return kept;
    };
    const e1 = state(exports(["f"]), "export", "e1");
    const e2 = state(exports(["f", "ktld_probe"]), "export", "e2");
    const bv1 = state(version("#1 Mon Dec  7 10:04:14 UTC 2026"), "version", "v1");
    const bv2 = state(version("#2 Mon Dec  7 10:05:31 UTC 2026"), "version", "v2");
    const bv10 = state(version("#10 Mon Dec  7 10:05:31 UTC 2026"), "version", "v10");
    const typed = cc("typed", "struct s { int a; };\nint f(struct s *p) { return p->a; }\n", ["-flto=thin"]);
    const native = cc("n", "struct t { long b; };\n__attribute__((section(\".data..percpu\"))) struct t pcpu_t;\nint g(struct t *p) { return p->b; }\n", []);
    const tools = { pahole: "pahole", pfunct: "pfunct", objcopy: "llvm-objcopy-19", flags: ["--btf_gen_floats"] };
    const s1 = await supersetBtf(e1, tools, dir);
    assert.match(s1, /^[0-9a-f]{64}$/);
    assert.equal(await supersetBtf(e2, tools, dir), s1, "an added export changed the superset of a unit without types");
    const sv1 = await supersetBtf(bv1, tools, dir);
    assert.equal(await supersetBtf(bv2, tools, dir), sv1, "another build number and time of the same length changed the superset");
    assert.notEqual(await supersetBtf(bv10, tools, dir), sv1, "a banner of another length (another char[N]) left the superset as it was");
    assert.notEqual(sv1, s1);
    await assert.rejects(supersetBtf(typed, tools, dir), /DISubprogram/);
    await assert.rejects(supersetBtf(e1, { ...tools, objcopy: "objcopy" }, dir), /not llvm-objcopy/);
    // The premise, on this toolchain: linked beside a native object (ld.lld's own LTO makes the
    // unit's code and DWARF), equal supersets give pahole's equal encodings of the image.
    const btfOf = (inputs: string[], name: string) => {
      execBounded("ld.lld-19", ["-r", "-o", `${name}.o`, ...inputs], { cwd: dir });
      execBounded("pahole", ["-J", "--btf_gen_floats", `--btf_encode_detached=${name}.btf`, `${name}.o`], { cwd: dir, stdio: "ignore" });
      return hashFile(path.join(dir, `${name}.btf`));
    };
    const alone = btfOf([native], "alone");
    assert.equal(btfOf([native, e1], "with1"), alone);
    assert.equal(btfOf([native, e2], "with2"), alone);
    const withV1 = btfOf([native, bv1], "withV1");
    assert.equal(btfOf([native, bv2], "withV2"), withV1);
    assert.notEqual(btfOf([native, bv10], "withV10"), withV1, "the check cannot see a bitcode unit's types in an image");
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("BTF made ahead of objtool: picked only by the key that leaves out objtool's prefix names, and only when that key and every object agree", async () => {
  const { pickBtf, planBtf, OBJTOOL_PREFIX } = await import("../src/btf");
  const inputs = [{ path: "a.o", hash: "a2", sbtf: "A2" }, { path: "b.o", hash: "b1" }];
  const ahead = { pahole: "pahole -J", symbols: "S-", btf: "B", inputs, leaveOut: OBJTOOL_PREFIX };
  const now = { pahole: "pahole -J", symbols: "S", symbolsLeavingOut: "S-", inputs };
  assert.equal(planBtf(ahead, now).run, false);
  assert.match(planBtf(ahead, now).reason, /linked from vmlinux\.o before objtool/);
  // The full key is not what the record holds: equal full keys do not pick it.
  assert.equal(planBtf(ahead, { ...now, symbols: "S-", symbolsLeavingOut: "T-" }).run, true);
  assert.match(planBtf(ahead, { ...now, symbolsLeavingOut: undefined }).reason, /other function or per-CPU symbols/);
  assert.equal(planBtf({ ...ahead, leaveOut: "__other_" }, now).run, true, "a record that leaves out another prefix was picked");
  assert.match(planBtf(ahead, { ...now, inputs: [{ path: "a.o", hash: "a3", sbtf: "A3" }, inputs[1]] }).reason, /types or functions of a\.o changed/);
  assert.match(planBtf(ahead, { ...now, pahole: "pahole -J -j" }).reason, /pahole or its arguments changed/);
  assert.equal(pickBtf([ahead], now).index, 0);
});

test("pahole ahead of objtool: refused when switched off, without one first-link line, or with a linker other than ld.lld", async () => {
  const { refuseBtfAhead } = await import("../src/btfahead");
  const body = "vmlinux_link .tmp_vmlinux1.ahead";
  assert.equal(refuseBtfAhead({ off: false, body, ld: "ld.lld-19" }), undefined);
  assert.equal(refuseBtfAhead({ off: false, body, ld: "/usr/lib/llvm-19/bin/ld.lld" }), undefined);
  assert.match(refuseBtfAhead({ off: true, body, ld: "ld.lld" })!, /KTLD_BTF_AHEAD=0/);
  assert.match(refuseBtfAhead({ off: false, body: undefined, ld: "ld.lld" })!, /first link is not one/);
  assert.match(refuseBtfAhead({ off: false, body, ld: "ld.bfd" })!, /\(ld\.bfd\) is not ld\.lld/);
});

test("the image pahole runs ahead on: a C function named with objtool's prefix is seen in its DWARF; the key that leaves the prefix out does not see prefix symbols", async () => {
  const { btfSymbolsKey, OBJTOOL_PREFIX } = await import("../src/btf");
  const { elfSectionsContain } = await import("../src/elf");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-ahead-"));
  const obj = (name: string, src: string) => {
    fs.writeFileSync(path.join(dir, `${name}.c`), src);
    execBounded("clang-19", ["-g", "-O2", "-c", "-o", `${name}.o`, `${name}.c`], { cwd: dir });
    return path.join(dir, `${name}.o`);
  };
  const plain = obj("plain", "int f(int y) { return y + 1; }\n");
  const named = obj("named", "int f(int y) { return y + 1; }\nint __pfx_g(int y) { return y; }\n");
  assert.equal(elfSectionsContain(plain, ".debug_", OBJTOOL_PREFIX), false);
  assert.equal(elfSectionsContain(named, ".debug_", OBJTOOL_PREFIX), true, "a DWARF function named __pfx_g was not seen");
  // objtool's way: a prefix symbol added beside the function, no DWARF for it.
  const pfx = path.join(dir, "pfx.o");
  execBounded("llvm-objcopy-19", ["--add-symbol=__pfx_f=.text:0,function,global", plain, pfx], { cwd: dir });
  assert.equal(elfSectionsContain(pfx, ".debug_", OBJTOOL_PREFIX), false);
  assert.notEqual(btfSymbolsKey(pfx), btfSymbolsKey(plain), "the full key does not see the prefix symbol");
  assert.equal(btfSymbolsKey(pfx, OBJTOOL_PREFIX), btfSymbolsKey(plain, OBJTOOL_PREFIX));
  assert.notEqual(btfSymbolsKey(plain, OBJTOOL_PREFIX), btfSymbolsKey(plain), "the two keys of one image are one");
  // Another function symbol is still seen by the key that leaves the prefix out.
  const other = path.join(dir, "other.o");
  execBounded("llvm-objcopy-19", ["--add-symbol=pfx_f=.text:0,function,global", plain, other], { cwd: dir });
  assert.notEqual(btfSymbolsKey(other, OBJTOOL_PREFIX), btfSymbolsKey(plain, OBJTOOL_PREFIX));
  // A compressed debug section says nothing: refused.
  const z = path.join(dir, "z.o");
  execBounded("llvm-objcopy-19", ["--compress-debug-sections=zlib", plain, z], { cwd: dir });
  assert.throws(() => elfSectionsContain(z, ".debug_", OBJTOOL_PREFIX), /compressed/);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("vmlinux.o plan: the extra script only when every pattern of the final script that names __patchable_function_entries discards it", () => {
  // x86's final script (6.12, CALL_PADDING: HAVE_DYNAMIC_FTRACE_NO_PATCHABLE), cut down.
  const x86 = ".text : { *(.text.hot .text.hot.*) *(.text .text.fixup) }\n __ex_table : { KEEP(*(__ex_table)) }\n"
    + " /DISCARD/ : { *(.note.GNU-stack) }\n /DISCARD/ : { *(.exitcall.exit) *(__patchable_function_entries) *(.discard) *(.discard.*) }\n"
    + " ASSERT(SIZEOF(.got) == 0, \"Unexpected GOT entries detected!\")";
  assert.equal(discards(x86, PATCHABLE_SECTION), true);
  const plan = planVmlinuxO(x86, "arch/x86/kernel/vmlinux.lds");
  assert.match(plan.script ?? "", /\/DISCARD\/ : \{ \*\(__patchable_function_entries\) \}/);
  assert.match(plan.reason, /^without __patchable_function_entries: the final link \(arch\/x86\/kernel\/vmlinux\.lds\) discards them/);
  // arm64 and riscv keep them for ftrace (KEEP_PATCHABLE): kbuild's command, and why.
  const arm64 = ".text : { *(.text) } __patchable_function_entries : { __start_mcount_loc = .; KEEP(*(__patchable_function_entries)) }\n/DISCARD/ : { *(.discard) }";
  assert.equal(discards(arm64, PATCHABLE_SECTION), false);
  assert.deepEqual(planVmlinuxO(arm64, "arch/arm64/kernel/vmlinux.lds"), { reason: "kbuild's command: the final link (arch/arm64/kernel/vmlinux.lds) does not discard __patchable_function_entries" });
  // Named nowhere: an orphan, which the linker keeps. Discarded, but also caught by a
  // wildcard before: kept. In a comment only: not a pattern.
  assert.equal(discards(".text : { *(.text) } /DISCARD/ : { *(.discard) }", PATCHABLE_SECTION), false);
  assert.equal(discards(".data : { *(__*) } /DISCARD/ : { *(__patchable_function_entries) }", PATCHABLE_SECTION), false);
  assert.equal(discards("/* *(__patchable_function_entries) */ .text : { *(.text) } /DISCARD/ : { *(__patchable_function_e[nx]tries) }", PATCHABLE_SECTION), true);
  assert.equal(planVmlinuxO(undefined, "arch/x86/kernel/vmlinux.lds").script, undefined);
});

test("BTF prediction: .tmp_vmlinux1 goes without debug info only when some kept record matches every object of vmlinux.o (the objects beside it and the symbols are the shim's to check)", async () => {
  const { predictReuse } = await import("../src/btf");
  const pahole = "pahole --btf_gen_floats -j";
  // The record has vmlinux.o's objects, then the two link-vmlinux.sh links beside it.
  const rec = {
    pahole, symbols: "S", btf: "B",
    inputs: [{ path: "a.o", hash: "a1", sbtf: "A" }, { path: "b.o", hash: "b1" }, { path: ".vmlinux.export.o", hash: "e1", sbtf: "E" }, { path: "init/version-timestamp.o", hash: "v1", sbtf: "V" }],
  };
  const body = [{ path: "a.o", hash: "a2", sbtf: "A" }, { path: "b.o", hash: "b1" }];
  assert.equal(predictReuse([rec], body, pahole), true, "a body edit: same types and functions");
  assert.equal(predictReuse([rec], [{ path: "a.o", hash: "a2", sbtf: "A2" }, { path: "b.o", hash: "b1" }], pahole), false, "a.o's types changed");
  assert.equal(predictReuse([rec], [{ path: "a.o", hash: "a2" }, { path: "b.o", hash: "b1" }], pahole), false, "a.o's types unknown");
  assert.equal(predictReuse([rec], body, "pahole --btf_gen_floats"), false, "other pahole arguments");
  assert.equal(predictReuse([], body, pahole), false, "no record");
  assert.equal(predictReuse([{ ...rec, inputs: rec.inputs.slice(1) }, rec], body, pahole), true, "an older record matches");
});

test("vmlinux.o plan: expressions and file lists in the final script are not section patterns; a pattern list with a file list inside is", () => {
  const base = "/DISCARD/ : { *(__patchable_function_entries) }";
  assert.equal(discards(`. = ALIGN((512 * 1024 * 1024)); ASSERT(SIZEOF(.got) == 0, "x") ${base}`, PATCHABLE_SECTION), true);
  assert.equal(discards(`.text : { *(EXCLUDE_FILE(*foo.o) .text __patchable*) } ${base}`, PATCHABLE_SECTION), false);
  assert.equal(discards(`.init : { KEEP(*(SORT(__patchable_function_entries))) } ${base}`, PATCHABLE_SECTION), false);
  assert.equal(discards(`.text : { foo.o(__patchable_function_entries) } ${base}`, PATCHABLE_SECTION), false);
});

test("ktld's pahole on a first link made without debug info: the kept .BTF put back when the symbols agree (no DWARF read); else the image linked again with its debug info and the real pahole run", async () => {
  const { btfSymbolsKey } = await import("../src/btf");
  const { elfHasSection, elfSection } = await import("../src/elf");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-btfshim-"));
  fs.writeFileSync(path.join(dir, "a.c"), "struct s { int a; long b; };\nint g(struct s *p) { return p->a; }\nint f(void) { struct s x = { 1, 2 }; return g(&x); }\n");
  execBounded("clang-19", ["-g", "-O1", "-c", "-o", "a.o", "a.c"], { cwd: dir });
  const linkArgs = ["-e", "f", "-o", "img", "a.o"];
  fs.writeFileSync(path.join(dir, "img.args"), linkArgs.join("\n") + "\n");
  const stripped = () => execBounded("ld.lld-19", ["--strip-debug", ...linkArgs], { cwd: dir });
  // The .BTF kept from a link with debug info (the real pahole's).
  execBounded("ld.lld-19", linkArgs, { cwd: dir });
  execBounded("pahole", ["-J", "--btf_gen_floats", "img"], { cwd: dir, env: { ...process.env, LLVM_OBJCOPY: "llvm-objcopy-19" } });
  const kept = elfSection(path.join(dir, "img"), ".BTF");
  assert.ok(kept, "pahole made no .BTF");
  fs.mkdirSync(path.join(dir, "btf"));
  const blob = hashBytes(kept);
  fs.writeFileSync(path.join(dir, "btf", blob), kept);
  const objHash = hashFile(path.join(dir, "a.o"))!;
  const shim = (symbols: string, ahead?: string) => {
    stripped();
    assert.equal(elfHasSection(path.join(dir, "img"), ".debug_info"), false);
    const plan = {
      real: "pahole", tools: { pahole: "pahole", pfunct: "pfunct" }, buildDir: dir, btfDir: path.join(dir, "btf"), result: path.join(dir, "result.json"), extra: [],
      inputs: [{ path: "a.o", hash: objHash }],
      records: [
        // A record of pahole run ahead of objtool is tried after the kept ones.
        ...(ahead ? [{ pahole: "pahole --btf_gen_floats", symbols: ahead, btf: blob, inputs: [{ path: "a.o", hash: objHash }], leaveOut: "__pfx_" }] : []),
        { pahole: "pahole --btf_gen_floats", symbols, btf: blob, inputs: [{ path: "a.o", hash: objHash }] },
      ],
      firstLink: { real: "ld.lld-19", args: path.join(dir, "img.args"), strip: path.join(dir, "strip") },
    };
    fs.writeFileSync(path.join(dir, "plan.json"), JSON.stringify(plan));
    const r = spawnBounded(process.execPath, [path.join(__dirname, "../src/btfshim.js"), "-J", "--btf_gen_floats", "img"], {
      cwd: dir, env: { ...process.env, KTLD_BTF_PLAN: path.join(dir, "plan.json"), LLVM_OBJCOPY: "llvm-objcopy-19" }, encoding: "utf8",
    });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(fs.readFileSync(path.join(dir, "result.json"), "utf8")) as { reused: boolean; ahead?: boolean; reason: string; records: { leaveOut?: string }[] };
  };
  stripped();
  const agree = shim(btfSymbolsKey(path.join(dir, "img")));
  assert.equal(agree.reused, true, agree.reason);
  assert.match(agree.reason, /; img linked without debug info$/);
  assert.equal(elfHasSection(path.join(dir, "img"), ".debug_info"), false, "the image was linked again although the .BTF was reused");
  assert.ok(elfSection(path.join(dir, "img"), ".BTF")?.equals(kept));
  // Made ahead: picked by the key that leaves the prefix out, said so, and not kept.
  const byAhead = shim("other symbols", btfSymbolsKey(path.join(dir, "img"), "__pfx_"));
  assert.deepEqual([byAhead.reused, byAhead.ahead], [false, true], byAhead.reason);
  assert.match(byAhead.reason, /^the symbols pahole reads changed .*; its image, linked from vmlinux\.o before objtool, has these objects/);
  assert.equal(elfHasSection(path.join(dir, "img"), ".debug_info"), false);
  assert.deepEqual(byAhead.records.filter((r) => r.leaveOut !== undefined), [], "a record made ahead was kept for later links");
  const aheadOff = shim("other symbols", "other symbols too");
  assert.equal(aheadOff.ahead, undefined);
  assert.match(aheadOff.reason, /; pahole ran ahead of objtool, but the image it ran on has other function or per-CPU symbols than this one/);
  assert.equal(elfHasSection(path.join(dir, "img"), ".debug_info"), true, "pahole ran on an image without DWARF");
  const moved = shim("other symbols");
  assert.equal(moved.reused, false);
  assert.match(moved.reason, /^the symbols pahole reads changed .*; img linked again with its debug info for pahole$/);
  assert.equal(elfHasSection(path.join(dir, "img"), ".debug_info"), true, "pahole ran on an image without DWARF");
  assert.ok(elfSection(path.join(dir, "img"), ".BTF")?.equals(kept), "the real pahole's .BTF differs from the one kept from the same objects");
  fs.rmSync(dir, { recursive: true, force: true });
});

test("ktld's LD for link-vmlinux.sh: only `-o .tmp_vmlinux1` goes without debug info, while its strip file exists, its arguments kept; where they cannot be kept, it keeps its debug info", async () => {
  const { firstLinkShim } = await import("../src/btf");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-ldshim-"));
  const fake = path.join(dir, "real ld");
  const strip = path.join(dir, "strip");
  fs.writeFileSync(fake, `#!/bin/sh\nprintf '%s\\n' "$@" > '${dir}/got'\n`, { mode: 0o755 });
  const run = (args: string[], kept: string) => {
    fs.writeFileSync(path.join(dir, "ld"), firstLinkShim(fake, kept, strip), { mode: 0o755 });
    fs.rmSync(path.join(dir, "got"), { force: true });
    const r = spawnBounded(path.join(dir, "ld"), args, { cwd: dir, encoding: "utf8" });
    assert.equal(r.status, 0, r.stderr);
    return fs.readFileSync(path.join(dir, "got"), "utf8").trim().split("\n");
  };
  const link = (out: string) => ["-m", "elf_x86_64", "--script=./arch/x86/kernel/vmlinux.lds", "-o", out, "--whole-archive", "vmlinux.o", "--no-whole-archive", ".tmp_vmlinux0.kallsyms.o"];
  const args = path.join(dir, "tmp_vmlinux1.args");
  // No strip file: every link as asked, no arguments kept.
  assert.deepEqual(run(link(".tmp_vmlinux1"), args), link(".tmp_vmlinux1"));
  assert.equal(fs.existsSync(args), false);
  fs.writeFileSync(strip, "");
  assert.deepEqual(run(link(".tmp_vmlinux1"), args), ["--strip-debug", ...link(".tmp_vmlinux1")]);
  assert.deepEqual(fs.readFileSync(args, "utf8").trim().split("\n"), link(".tmp_vmlinux1"));
  for (const out of [".tmp_vmlinux2", "vmlinux", ".tmp_vmlinux1.o"]) assert.deepEqual(run(link(out), args), link(out), `${out} was linked otherwise than asked`);
  // An input named .tmp_vmlinux1 is not the output.
  assert.deepEqual(run(["-o", "x", ".tmp_vmlinux1"], args), ["-o", "x", ".tmp_vmlinux1"]);
  assert.deepEqual(run(link(".tmp_vmlinux1"), path.join(dir, "no such dir", "args")), link(".tmp_vmlinux1"));
  fs.rmSync(dir, { recursive: true, force: true });
});

test("RESP: replies parsed whole or not at all; commands encoded as bulk strings", () => {
  assert.deepEqual(parseReply(Buffer.from("+OK\r\n")), { reply: "OK", end: 5 });
  assert.deepEqual(parseReply(Buffer.from(":42\r\n")), { reply: 42, end: 5 });
  assert.deepEqual(parseReply(Buffer.from("$-1\r\n")), { reply: null, end: 5 });
  const bulk = parseReply(Buffer.from("$5\r\nab\r\nc\r\n"))!;
  assert.equal((bulk.reply as Buffer).toString(), "ab\r\nc");
  assert.equal(parseReply(Buffer.from("$5\r\nab")), undefined, "a bulk string cut short is not yet a reply");
  assert.ok(parseReply(Buffer.from("-ERR no\r\n"))!.reply instanceof RespError);
  assert.throws(() => parseReply(Buffer.from("?what\r\n")), RespError);
  assert.equal(encodeCommand(["GET", "k"]).toString(), "*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
});

test("shared cache entries: a whole object under its own hash opens; a flipped, cut or foreign one is refused", () => {
  const bytes = Buffer.from("not an ELF object at all, but hashed right");
  const hash = createHash("sha256").update(bytes).digest("hex");
  assert.deepEqual(openEntry(makeEntry(bytes, hash)), { refused: "not a whole ELF object" });
  const flipped = makeEntry(bytes, hash);
  flipped[40] ^= 1;
  assert.deepEqual(openEntry(flipped), { refused: "its bytes do not match its hash" });
  assert.deepEqual(openEntry(makeEntry(bytes, hash).subarray(0, 20)), { refused: "20 bytes, shorter than its header" });
});

test("shared cache: a server that accepts and never answers is given up after the timeout, and the cache says why", async () => {
  const silent = net.createServer(() => { /* never answers */ });
  const port = await new Promise<number>((resolve) => silent.listen(0, "127.0.0.1", () => resolve((silent.address() as net.AddressInfo).port)));
  const lines: string[] = [];
  const c = new SharedCache({ url: `redis://127.0.0.1:${port}`, write: false, timeoutMs: 300 }, (l) => lines.push(l));
  const t0 = performance.now();
  assert.equal(await c.get("00".repeat(32), "kernel/fork.o"), undefined);
  assert.ok(performance.now() - t0 < 3000, "waited past its timeout");
  assert.match(c.state().down ?? "", /no answer after 300 ms/);
  // Left alone now: the next ask returns at once, and the line was said once.
  const t1 = performance.now();
  assert.equal(await c.get("11".repeat(32), "kernel/exit.o"), undefined);
  assert.ok(performance.now() - t1 < 50);
  assert.equal(lines.length, 1);
  c.close();
  silent.close();
  assert.throws(() => new SharedCache({ url: "http://x", write: false }), /redis:\/\/HOST/);
});

test("shared BE key: the same without the tree's path or clang's install time; none for a command that names the build dir", () => {
  const inp = {
    object: "kernel/fork.o", bitcode: "b", index: "i", imports: { "kernel/exit.o": "e" }, argv: ["clang-19", "-O2", "-c", "kernel/fork.o"],
    clang: "/usr/lib/llvm-19/bin/clang:1:2:v", incbin: {}, cwd: "/home/a/linux",
  };
  const k = sharedBackendKey(inp, "clang:1:v");
  assert.ok(k);
  assert.equal(sharedBackendKey({ ...inp, cwd: "/srv/ci/linux", clang: "/usr/lib/llvm-19/bin/clang:1:999:v" }, "clang:1:v"), k);
  assert.notEqual(sharedBackendKey({ ...inp, bitcode: "b2" }, "clang:1:v"), k);
  assert.notEqual(sharedBackendKey(inp, "clang:2:v"), k);
  assert.equal(sharedBackendKey({ ...inp, argv: [...inp.argv, "-I/home/a/linux/include"] }, "clang:1:v"), undefined);
});

test("distcc routing of FE replays", async (t) => {
  const cfg = { distcc: "distcc", hosts: "buildbox/8", slots: 8, source: "option" as const };
  const c = "clang-19 -Wp,-MMD,kernel/.fork.o.d -Werror=unused-command-line-argument -fmacro-prefix-map=../= -c -o kernel/fork.o ../kernel/fork.c";

  await t.test("a C compile goes out with the trap's flag after kbuild's; an assembler source and a chained rule stay here, their wrapper dropped", () => {
    const r = routeFrontend(c, "../kernel/fork.c", cfg);
    assert.equal(r.remote, true);
    assert.equal(r.command, `distcc ${c} ${DISTCC_TRAP_FLAG}`);
    assert.ok(r.command.indexOf(DISTCC_TRAP_FLAG) > r.command.indexOf("-Werror=unused-command-line-argument"), "the flag must come after kbuild's -Werror");
    const s = routeFrontend(`distcc clang-19 -D__ASSEMBLY__ -c -o arch/x86/entry/entry_64.o ../arch/x86/entry/entry_64.S`, "../arch/x86/entry/entry_64.S", cfg);
    assert.equal(s.remote, false);
    assert.equal(s.command, "clang-19 -D__ASSEMBLY__ -c -o arch/x86/entry/entry_64.o ../arch/x86/entry/entry_64.S");
    assert.match(s.why, /C compiles only/);
    assert.equal(routeFrontend(`${c}; echo done`, "../kernel/fork.c", cfg).remote, false);
    // No distcc: kbuild's command, wrapper and all, unchanged.
    assert.deepEqual(routeFrontend(`ccache ${c}`, "../kernel/fork.c", undefined), { command: `ccache ${c}`, remote: false, why: "local" });
    assert.equal(stripWrapper(`/usr/bin/distcc ${c}`), c);
    assert.equal(stripWrapper(c), c);
  });

  await t.test("slots from DISTCC_HOSTS, the environment ktld gives distcc, and what counts as distcc's own failure", () => {
    assert.equal(distccSlots("buildbox/8 other:3633/4,lzo localhost"), 14);
    assert.equal(distccSlots("a b --randomize"), 8);
    assert.equal(distccSlots(""), 0);
    assert.deepEqual(distccEnv(cfg), { DISTCC_HOSTS: "buildbox/8", DISTCC_FALLBACK: "0", DISTCC_NO_REWRITE_CROSS: "1" });
    assert.equal(isDistccFailure(116), true);
    assert.equal(isDistccFailure(103), true);
    assert.equal(isDistccFailure(1), false);
    assert.equal(isDistccFailure(null), false);
    assert.match(String(distccConfig({}, "option")), /--distcc needs DISTCC_HOSTS/);
    assert.match(String(distccConfig({}, "recorded", "distcc")), /FE replays run here/);
    assert.deepEqual(distccConfig({ DISTCC_HOSTS: "h/3" }, "recorded", "/usr/bin/distcc"), { distcc: "/usr/bin/distcc", hosts: "h/3", slots: 3, source: "recorded" });
  });
});

/** A link-vmlinux.sh of 6.12's shape whose steps only say, in `calls`, what they were run
 * with; `layoutOf` says what the kallsyms object of each image holds (its size). */
function fakeLinkScript(): string {
  return [
    "#!/bin/sh", "set -e", 'LD="$1"',
    'is_enabled() { case " $KTLD_FAKE_CONFIG " in *" $1 "*) return 0;; esac; return 1; }',
    'info() { :; }',
    'vmlinux_link() { echo "link ${1} k=${kallsymso} b=${btf_vmlinux_bin_o} s=${strip_debug}" >> calls; }',
    'gen_btf() { echo "btf ${1}" >> calls; btf_vmlinux_bin_o=${1}.btf.o; }',
    // System.map's nm takes a while: beside the sort, the sort's line comes before its end.
    'mksysmap() { if [ "$2" = System.map ]; then sleep 0.3; echo "map done" >> calls; [ -z "$KTLD_FAKE_MAPFAIL" ]; else echo "nm ${1}" >> calls; fi; }',
    'sorttable() { echo "sort ${1}" >> calls; }',
    'kallsyms() { echo "ksyms ${1}" >> calls; kallsymso_prev="${kallsymso:-}"; kallsymso=${2}.o; }',
    'kallsymso_changed() { [ -n "$KTLD_FAKE_CHANGED" ]; }',
    "sysmap_and_kallsyms()\n{\n\tmksysmap \"${1}\" \"${1}.syms\"\n\tkallsyms \"${1}.syms\" \"${1}.kallsyms\"\n\n\tkallsyms_sysmap=${1}.syms\n}",
    'if [ "$1" = "clean" ]; then exit 0; fi',
    '${MAKE} -f "${srctree}/scripts/Makefile.build" obj=init init/version-timestamp.o',
    "btf_vmlinux_bin_o=", "kallsymso=", "strip_debug=",
    "if is_enabled CONFIG_KALLSYMS; then", "\ttrue > .tmp_vmlinux.kallsyms0.syms", "\tkallsyms .tmp_vmlinux.kallsyms0.syms .tmp_vmlinux0.kallsyms", "fi",
    "vmlinux_link .tmp_vmlinux1",
    "if is_enabled CONFIG_DEBUG_INFO_BTF; then", "\tif ! gen_btf .tmp_vmlinux1; then", "\t\texit 1", "\tfi", "fi",
    "if is_enabled CONFIG_KALLSYMS; then", "", "\t# the passes", "\tstrip_debug=1", "",
    "\tsysmap_and_kallsyms .tmp_vmlinux1", "\tsize1=1", "",
    "\tvmlinux_link .tmp_vmlinux2", "\tsysmap_and_kallsyms .tmp_vmlinux2", "\tsize2=1", "",
    "\tif [ $size1 -ne $size2 ] || kallsymso_changed; then", "\t\tvmlinux_link .tmp_vmlinux3", "\t\tsysmap_and_kallsyms .tmp_vmlinux3", "\tfi", "fi",
    "strip_debug=", "vmlinux_link vmlinux", 'echo "final k=${kallsymso} map=${kallsyms_sysmap}" >> calls', "",
    "mksysmap vmlinux System.map", "", "if is_enabled CONFIG_BUILDTIME_TABLE_SORT; then", "\tif ! sorttable vmlinux; then", "\t\texit 1", "\tfi", "fi", "",
    'echo "check map" >> calls', "",
  ].join("\n");
}

test("link-vmlinux.sh in ktld's order: the tree's own lines, the second link from the last kallsyms object, and the script's own passes whenever that link is not kbuild's", async () => {
  const { readLinkScript, parts, parseState, dumpState, parseVmlinuxCommand, sameLayout, sysmapBesideSort } = await import("../src/kbuild/linkscript");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-linkscript-"));
  try {
    const script = readLinkScript(fakeLinkScript());
    assert.ok(!("unknown" in script), JSON.stringify(script));
    const env = { ...process.env, MAKE: "true", srctree: ".", KTLD_FAKE_CONFIG: "CONFIG_KALLSYMS CONFIG_DEBUG_INFO_BTF CONFIG_BUILDTIME_TABLE_SORT" };
    const run = (body: string, extra: Record<string, string> = {}) => {
      const state = path.join(dir, "state");
      const r = spawnBounded("/bin/sh", ["-c", `${body}${dumpState(state)}`, "link-vmlinux.sh", "ld.lld"], { cwd: dir, env: { ...env, ...extra }, encoding: "utf8" });
      assert.equal(r.status, 0, r.stderr);
      return parseState(fs.readFileSync(state, "utf8"));
    };
    const calls = () => fs.readFileSync(path.join(dir, "calls"), "utf8").trim().split("\n");
    // The whole script: kbuild's order.
    run(parts.whole(script));
    const kbuild = calls();
    assert.deepEqual(kbuild, [
      "ksyms .tmp_vmlinux.kallsyms0.syms", "link .tmp_vmlinux1 k=.tmp_vmlinux0.kallsyms.o b= s=", "btf .tmp_vmlinux1",
      "nm .tmp_vmlinux1", "ksyms .tmp_vmlinux1.syms", "link .tmp_vmlinux2 k=.tmp_vmlinux1.kallsyms.o b=.tmp_vmlinux1.btf.o s=1",
      "nm .tmp_vmlinux2", "ksyms .tmp_vmlinux2.syms", "link vmlinux k=.tmp_vmlinux2.kallsyms.o b=.tmp_vmlinux1.btf.o s=", "final k=.tmp_vmlinux2.kallsyms.o map=.tmp_vmlinux2.syms",
      "map done", "sort vmlinux", "check map",
    ]);
    // After the final link, ktld's System.map beside the sort, and the check after both.
    const BESIDE = ["sort vmlinux", "map done", "check map"];
    // ktld's order, its second link accepted: no second link or pass after the first, and the
    // final link and the script's check see what kbuild's would.
    const ours = (done: "first" | "second", extra: Record<string, string> = {}, fromLast = true) => {
      fs.rmSync(path.join(dir, "calls"), { force: true });
      let state = run(parts.first(script));
      run(parts.firstSyms(script));
      run(parts.firstPass(script));
      state = run(parts.btf(script, state));
      if (fromLast) run(parts.secondFromLast(script, state, "/state/kallsyms-last.o"));
      const final = run(parts.finish(script, state, done), extra);
      return { calls: calls(), final };
    };
    const accepted = ours("second");
    assert.deepEqual(accepted.calls, [
      "ksyms .tmp_vmlinux.kallsyms0.syms", "link .tmp_vmlinux1 k=.tmp_vmlinux0.kallsyms.o b= s=", "nm .tmp_vmlinux1", "ksyms .tmp_vmlinux1.syms", "btf .tmp_vmlinux1",
      "link .tmp_vmlinux2 k=/state/kallsyms-last.o b=.tmp_vmlinux1.btf.o s=1", "nm .tmp_vmlinux2", "ksyms .tmp_vmlinux2.syms",
      "link vmlinux k=.tmp_vmlinux2.kallsyms.o b=.tmp_vmlinux1.btf.o s=", "final k=.tmp_vmlinux2.kallsyms.o map=.tmp_vmlinux2.syms", ...BESIDE,
    ]);
    assert.equal(accepted.final.kallsymso, ".tmp_vmlinux2.kallsyms.o");
    // The script's own third-pass test still decides: K1 and K2 unlike each other.
    const third = ours("second", { KTLD_FAKE_CHANGED: "1" });
    assert.deepEqual(third.calls.slice(-8, -4), ["link .tmp_vmlinux3 k=.tmp_vmlinux2.kallsyms.o b=.tmp_vmlinux1.btf.o s=1", "nm .tmp_vmlinux3", "ksyms .tmp_vmlinux3.syms", "link vmlinux k=.tmp_vmlinux3.kallsyms.o b=.tmp_vmlinux1.btf.o s="]);
    // The default: the first pass beside the BTF step, then the script's own second link.
    assert.deepEqual(ours("first", {}, false).calls, [
      "ksyms .tmp_vmlinux.kallsyms0.syms", "link .tmp_vmlinux1 k=.tmp_vmlinux0.kallsyms.o b= s=", "nm .tmp_vmlinux1", "ksyms .tmp_vmlinux1.syms", "btf .tmp_vmlinux1",
      ...kbuild.slice(5, -3), ...BESIDE,
    ]);
    // The map's failure is the script's, beside the sort as in line.
    const failing = spawnBounded("/bin/sh", ["-c", parts.finish(script, {}, "none"), "link-vmlinux.sh", "ld.lld"], { cwd: dir, env: { ...env, KTLD_FAKE_MAPFAIL: "1" }, encoding: "utf8" });
    assert.notEqual(failing.status, 0, "a failed System.map let the script go on");
    assert.doesNotMatch(fs.readFileSync(path.join(dir, "calls"), "utf8"), /check map\n$/);
    // Another shape after the final link: its lines as they are.
    assert.equal(sysmapBesideSort("mksysmap vmlinux System.map\nsorttable vmlinux"), undefined);
    assert.equal(sysmapBesideSort("mksysmap vmlinux System.map\nif is_enabled CONFIG_BUILDTIME_TABLE_SORT; then\n\tcp System.map x\nfi"), undefined);
    // The image pahole runs ahead on: the script's first link, to another name.
    fs.rmSync(path.join(dir, "calls"), { force: true });
    run(parts.ahead(script, ".tmp_vmlinux1.ahead")!);
    assert.deepEqual(calls(), ["ksyms .tmp_vmlinux.kallsyms0.syms", "link .tmp_vmlinux1.ahead k=.tmp_vmlinux0.kallsyms.o b= s="]);
    assert.equal(parts.ahead(script, "a b"), undefined);
    assert.equal(parts.ahead(readLinkScript(fakeLinkScript().replace("vmlinux_link .tmp_vmlinux1\n", "vmlinux_link .tmp_vmlinux1\nvmlinux_link .tmp_vmlinux1\n")) as never, "x"), undefined);
    // Refused (K1 laid out unlike the last object): the script's second link and pass, with K1.
    const refused = ours("first");
    assert.deepEqual(refused.calls.slice(-8, -3), [
      "link .tmp_vmlinux2 k=.tmp_vmlinux1.kallsyms.o b=.tmp_vmlinux1.btf.o s=1", "nm .tmp_vmlinux2", "ksyms .tmp_vmlinux2.syms",
      "link vmlinux k=.tmp_vmlinux2.kallsyms.o b=.tmp_vmlinux1.btf.o s=", "final k=.tmp_vmlinux2.kallsyms.o map=.tmp_vmlinux2.syms",
    ]);
    // Another shape is run whole, with the reason.
    assert.match(String((readLinkScript(fakeLinkScript().replace("\tvmlinux_link .tmp_vmlinux2\n", "")) as { unknown: string }).unknown), /kallsyms passes/);
    assert.match(String((readLinkScript(fakeLinkScript().replace("gen_btf .tmp_vmlinux1; then", "gen_btf .tmp_vmlinux.btf; then")) as { unknown: string }).unknown), /gen_btf/);
    assert.deepEqual(parseVmlinuxCommand('../scripts/link-vmlinux.sh "ld.lld-19" "-m elf_x86_64" "--build-id=sha1";  make -f ../arch/x86/Makefile.postlink vmlinux'),
      { script: "../scripts/link-vmlinux.sh", args: ["ld.lld-19", "-m elf_x86_64", "--build-id=sha1"], postlink: "make -f ../arch/x86/Makefile.postlink vmlinux" });
    assert.equal(parseVmlinuxCommand('scripts/link-vmlinux.sh "ld.lld" "" "";  true')?.postlink, "");
    assert.equal(parseVmlinuxCommand("ld.lld -o vmlinux"), undefined);
    assert.deepEqual(sameLayout({ sections: [".rodata 1 2 100 8"], symbols: ["a"] }, { sections: [".rodata 1 2 100 8"], symbols: ["a"] }), { same: true });
    assert.deepEqual(sameLayout({ sections: [".rodata 1 2 100 8"], symbols: ["a"] }, { sections: [".rodata 1 2 104 8"], symbols: ["a"] }), { same: false, why: "its sections differ in size" });
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the toolchain check: pahole missing where the tree has BTF, and llvm-ar missing, are one line each naming the fix; present, the toolchain is found", async () => {
  const { resolveToolchain } = await import("../src/toolchain");
  const tree = (btf: boolean) => ({
    units: new Map([["a.o", { compiler: "clang-19" }]]), vmlinuxLink: { ldArgv: ["ld.lld-19"] }, makeVars: ["LLVM=-19"],
    config: new Map([["CONFIG_CLANG_VERSION", ""], ...(btf ? [["CONFIG_DEBUG_INFO_BTF", "y"] as [string, string]] : [])]),
  }) as never;
  const bin = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-tools-"));
  const saved = process.env.PATH;
  try {
    for (const t of ["clang-19", "ld.lld-19", "llvm-ar-19"]) fs.symlinkSync(`/usr/bin/${t}`, path.join(bin, t));
    process.env.PATH = bin;
    assert.throws(() => resolveToolchain(tree(true), "/b"), /: pahole not found on PATH \(\/b has CONFIG_DEBUG_INFO_BTF, whose link runs it\): install it \(apt-get install dwarves\) or put it on PATH$/);
    assert.equal(resolveToolchain(tree(false), "/b").ld, "ld.lld-19");
    fs.symlinkSync("/usr/bin/pahole", path.join(bin, "pahole"));
    assert.equal(resolveToolchain(tree(true), "/b").clang, path.join(bin, "clang-19"));
    fs.rmSync(path.join(bin, "llvm-ar-19"));
    assert.throws(() => resolveToolchain(tree(false), "/b"), /llvm-ar-19 not found on PATH \(\/b makes its archives with it\): install it \(apt-get install llvm-19\)/);
  } finally {
    process.env.PATH = saved;
    fs.rmSync(bin, { recursive: true, force: true });
  }
});

test("a thin-link's staging dir is on tmpfs where there is one, one per state dir, emptied when taken and when the state dir's lock is let go; KTLD_STAGE_TMPFS=0 and a dir that is no tmpfs keep it under the state dir", async () => {
  const { StateDir, sweepTmpfs, tmpfsRoot } = await import("../src/state");
  // The roots of state dirs that are gone are swept; others are left.
  const shm = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-shm-"));
  const me = `ktld-${process.getuid?.() ?? 0}`;
  for (const [n, owner] of [[`${me}-gone`, path.join(shm, "no-such-state-dir")], [`${me}-here`, shm], ["ktld-99999-other", path.join(shm, "gone-too")]]) {
    fs.mkdirSync(path.join(shm, n));
    fs.writeFileSync(path.join(shm, n, "state-dir"), owner);
  }
  sweepTmpfs(shm);
  assert.deepEqual(fs.readdirSync(shm).sort(), [`${me}-here`, "ktld-99999-other"].sort());
  fs.rmSync(shm, { recursive: true, force: true });
  assert.equal(tmpfsRoot("/x", "/proc"), undefined, "a dir that is no tmpfs was taken for one");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-state-"));
  const state = await StateDir.open(path.join(dir, ".ktld"));
  try {
    const root = state.tmpfsDir;
    if (fs.statfsSync("/dev/shm").type === 0x01021994) assert.ok(root?.startsWith("/dev/shm/ktld-"), `no tmpfs root: ${root}`);
    const a = state.stagingDir("stage");
    assert.equal(path.dirname(a), root ?? path.join(dir, ".ktld"));
    fs.writeFileSync(path.join(a, "x.thinlto.bc"), "old");
    assert.deepEqual(fs.readdirSync(state.stagingDir("stage")), [], "a staging dir taken again was not empty");
    assert.notEqual(tmpfsRoot(path.join(dir, "other")), root, "two state dirs share a tmpfs root");
    process.env.KTLD_STAGE_TMPFS = "0";
    assert.equal(state.stagingDir("stage"), path.join(dir, ".ktld", "stage"));
  } finally {
    delete process.env.KTLD_STAGE_TMPFS;
    const root = state.tmpfsDir;
    state.release();
    if (root) assert.equal(fs.existsSync(root), false, "the tmpfs root outlived the lock");
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("kbuild's environment is captured again when the caller's KBUILD_*, K*FLAGS, LLVM or ARCH differ, not for other variables", async () => {
  const { envKey } = await import("../src/kbuild/env");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-envkey-"));
  try {
    fs.writeFileSync(path.join(dir, ".config"), "CONFIG_X=y\n");
    const base = { PATH: "/usr/bin", HOME: "/root", KBUILD_BUILD_TIMESTAMP: "Thu Jan  1 00:00:00 UTC 2026", LLVM: "-19" };
    const key = envKey(dir, ["LLVM=-19"], base);
    assert.equal(envKey(dir, ["LLVM=-19"], { ...base, HOME: "/home/x", TERM: "xterm" }), key);
    for (const [k, v] of [["KBUILD_BUILD_TIMESTAMP", undefined], ["KBUILD_BUILD_VERSION", "2"], ["KCFLAGS", "-g"], ["LLVM", "1"], ["ARCH", "x86_64"]] as const) {
      const other: NodeJS.ProcessEnv = { ...base, [k]: v };
      if (v === undefined) delete other[k];
      assert.notEqual(envKey(dir, ["LLVM=-19"], other), key, `${k} changed and the key did not`);
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
