// `ktld build` on the real kernel fixture (tinyconfig + CONFIG_LTO_CLANG_THIN, clang-19).
// The steps share one copy of the tree and run in order.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { gzipSync } from "node:zlib";
import { describe, test } from "node:test";
import { fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { referenceNatives } from "./reference";
import { bootLog, changedKeys, elfShape, multisetDiff, editFile, execBounded, fixtureCopy, hashesOf, ktldBuild, make, spawnBounded } from "./helpers";

const FORK_ANCHOR = "void free_task(struct task_struct *tsk)\n{\n";
const MARKER = "ktld-test-marker-in-free-task";

function strings(file: string): string {
  return execBounded("strings", ["-a", file], { encoding: "latin1", maxBuffer: 256 << 20 });
}

describe("ktld build on the kernel fixture", { timeout: 30 * 60_000 }, () => {
  const tree = fixtureCopy("build");
  // kbuild's own vmlinux.o (in-process ThinLTO inside ld.lld), before ktld relinks it.
  const kbuildShape = elfShape(path.join(tree, "vmlinux.o"));
  const forkC = path.join(tree, "kernel/fork.c");
  const original = fs.readFileSync(forkC, "utf8");
  let modules = 0;
  let incremental = new Map<string, string>();
  const configGz = fs.readFileSync(path.join(tree, "kernel/config_data.gz"));

  test("first build makes a vmlinux that is an x86-64 ELF executable with start_kernel", () => {
    const r = ktldBuild(tree);
    assert.equal(r.ok, true);
    modules = r.backend.modules;
    assert.ok(modules > 400, `only ${modules} modules`);
    assert.equal(r.backend.compiled + r.backend.cacheHits + r.backend.unchanged, modules);
    const vmlinux = path.join(tree, "vmlinux");
    assert.match(execBounded("file", [vmlinux], { encoding: "utf8" }), /ELF 64-bit LSB executable, x86-64/);
    assert.match(execBounded("llvm-nm-19", [vmlinux], { encoding: "utf8", maxBuffer: 64 << 20 }), / [Tt] start_kernel\n/);
    // The link is reported as its steps: ktld's own and those kbuild's final link printed
    // (this tinyconfig has no kallsyms and no BTF: link-vmlinux.sh links once, then sorts).
    const steps = (r.link.steps ?? []).map((s) => s.name);
    for (const s of ["LD vmlinux.o", "MODPOST vmlinux.symvers", "LD vmlinux", "SORTTAB vmlinux"]) assert.ok(steps.includes(s), `no link step ${s}: ${steps.join(", ")}`);
    const total = (r.link.steps ?? []).filter((s) => s.name !== "GEN modules.builtin").reduce((n, s) => n + s.ms, 0);
    assert.ok(total <= r.link.ms && total > r.link.ms / 2, `the steps took ${total} ms of the link's ${r.link.ms} ms`);
  });

  test("ktld's vmlinux.o has the sections and symbols (with sizes) of kbuild's own in-process LTO link", () => {
    // The reference is kbuild's make: a BE flag that differs from what lld's in-process
    // ThinLTO uses shows here (one .text per module without -ffunction-sections, other
    // sizes with another optimization level).
    const ktldShape = elfShape(path.join(tree, "vmlinux.o"));
    assert.ok(kbuildShape.sections.length > 1000 && kbuildShape.symbols.length > 1000);
    assert.deepEqual(multisetDiff(kbuildShape.sections, ktldShape.sections), { onlyA: [], onlyB: [] }, "sections differ (kbuild's, ktld's)");
    assert.deepEqual(multisetDiff(kbuildShape.symbols, ktldShape.symbols), { onlyA: [], onlyB: [] }, "symbols differ (kbuild's, ktld's)");
  });

  test("a second build with nothing changed compiles no BE module and skips the link", () => {
    const r = ktldBuild(tree);
    assert.equal(r.backend.compiled, 0);
    assert.equal(r.backend.cacheHits, 0);
    assert.equal(r.backend.unchanged, modules);
    assert.equal(r.thinlink.indexChanged, 0);
    assert.equal(r.link.skipped, true);
  });

  test("a function edit in kernel/fork.c: exactly the modules whose index bytes changed are compiled", () => {
    editFile(forkC, FORK_ANCHOR, `${FORK_ANCHOR}\tpr_info("${MARKER}\\n");\n`);
    make(tree, ["kernel/fork.o"]);
    const before = hashesOf(tree, ".o.thinlto.bc");
    const r = ktldBuild(tree);
    const changedIndex = changedKeys(before, hashesOf(tree, ".o.thinlto.bc")).map((f) => f.replace(/\.thinlto\.bc$/, ""));
    const compiled = r.backend.jobs.filter((j) => j.action === "compile").map((j) => j.object).sort();
    assert.ok(changedIndex.includes("kernel/fork.o"));
    assert.deepEqual(compiled, changedIndex);
    assert.ok(compiled.length < modules / 10, `${compiled.length} of ${modules} compiled`);
    assert.equal(r.backend.unchanged, modules - compiled.length);
    assert.ok(r.backend.jobs.some((j) => j.object !== "kernel/fork.o" && /index changed: imports kernel\/fork\.o/.test(j.reason)));
    assert.ok(strings(path.join(tree, "vmlinux")).includes(MARKER), "the new string is not in vmlinux");
    incremental = hashesOf(tree, ".thinlto-native.o");
  });

  test("make vmlinux after ktld agrees: no in-process LTO relink of vmlinux.o, no compile, ktld's vmlinux.o kept", () => {
    const before = ["vmlinux.o", "vmlinux"].map((f) => hashFile(path.join(tree, f)));
    const r = spawnBounded("make", [...MAKE_ARGS, "vmlinux"], { cwd: tree, env: fixtureEnv() });
    assert.equal(r.status, 0, r.stderr.slice(-3000));
    const lines = r.stdout.split("\n");
    assert.deepEqual(lines.filter((l) => /^\s+(CC|LD|AR)\s/.test(l)), [], "make redid work ktld had done");
    assert.equal(hashFile(path.join(tree, "vmlinux.o")), before[0], "make relinked vmlinux.o");
  });

  test("reverting the edit: every native comes from the cache, none is compiled", () => {
    fs.writeFileSync(forkC, original);
    make(tree, ["kernel/fork.o"]);
    const r = ktldBuild(tree);
    assert.equal(r.backend.compiled, 0);
    assert.ok(r.backend.cacheHits >= 1);
    assert.ok(!strings(path.join(tree, "vmlinux")).includes(MARKER), "the reverted string is still in vmlinux");
  });

  test("references that share nothing with this tree's run: a clean ktld build of the same sources in a second tree from a fresh state dir, and the seed's recipe rebuilt from kbuild's records", async () => {
    const edited = original.replace(FORK_ANCHOR, `${FORK_ANCHOR}\tpr_info("${MARKER}\\n");\n`);
    fs.writeFileSync(forkC, edited);
    make(tree, ["kernel/fork.o"]);
    const again = ktldBuild(tree);
    assert.equal(again.backend.compiled, 0, "the edit seen before must come from the cache");
    assert.deepEqual(hashesOf(tree, ".thinlto-native.o"), incremental);
    const linked = ["vmlinux.o", "vmlinux"].map((f) => hashFile(path.join(tree, f)));

    const second = fixtureCopy("build-clean");
    fs.writeFileSync(path.join(second, "kernel/fork.c"), edited);
    make(second, ["kernel/fork.o"]);
    const state = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-fresh-state-"));
    try {
      const full = ktldBuild(second, ["--state-dir", state]);
      assert.equal(full.backend.compiled, modules);
      const clean = hashesOf(second, ".thinlto-native.o");
      assert.deepEqual(changedKeys(incremental, clean), []);
      assert.equal(clean.size, incremental.size);
      assert.deepEqual(["vmlinux.o", "vmlinux"].map((f) => hashFile(path.join(second, f))), linked, "vmlinux.o and vmlinux of the clean build differ");
    } finally {
      fs.rmSync(state, { recursive: true, force: true });
    }

    const out = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-reference-"));
    try {
      const recipe = await referenceNatives(second, out);
      assert.equal(recipe.size, incremental.size, "the recipe's thin-link indexed another set of modules");
      const differ = [...recipe].filter(([o, h]) => incremental.get(o.replace(/\.o$/, ".thinlto-native.o")) !== h).map(([o]) => o);
      assert.deepEqual(differ, [], "natives that differ from the seed's recipe");
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });

  test("an object that .incbin's a file is rebuilt when only that file changes", () => {
    const gz = path.join(tree, "kernel/config_data.gz");
    assert.ok(fs.existsSync(gz), "fixture lacks CONFIG_IKCONFIG");
    const payload = "# ktld-incbin-marker\n" + fs.readFileSync(path.join(tree, ".config"), "utf8");
    fs.writeFileSync(gz, gzipSync(payload));
    const r = ktldBuild(tree);
    const configs = r.backend.jobs.find((j) => j.object === "kernel/configs.o");
    assert.ok(configs, "kernel/configs.o was not rebuilt");
    assert.equal(configs.action, "compile");
    assert.match(configs.reason, /\.incbin kernel\/config_data\.gz changed/);
    assert.equal(r.backend.compiled, 1);
    const vmlinux = fs.readFileSync(path.join(tree, "vmlinux"));
    assert.ok(vmlinux.includes(gzipSync(payload).subarray(10, 40)), "the new payload is not in vmlinux");
  });

  test("a corrupted cache entry is detected, dropped and rebuilt, never linked", () => {
    fs.writeFileSync(path.join(tree, "kernel/config_data.gz"), configGz);
    // Back to the original fork.c, so that the edited state's natives come from the cache.
    fs.writeFileSync(forkC, original);
    make(tree, ["kernel/fork.o"]);
    ktldBuild(tree);
    fs.writeFileSync(forkC, original.replace(FORK_ANCHOR, `${FORK_ANCHOR}\tpr_info("${MARKER}\\n");\n`));
    make(tree, ["kernel/fork.o"]);
    // Flip a byte in the cached native of the edited fork.o.
    const blobs = path.join(tree, ".ktld/blobs");
    const forkNative = incremental.get("kernel/fork.thinlto-native.o")!;
    const blob = path.join(blobs, forkNative.slice(0, 2), forkNative);
    assert.ok(fs.existsSync(blob), "the edited fork native should be cached");
    const bytes = fs.readFileSync(blob);
    bytes[bytes.length >> 1] ^= 0xff;
    fs.writeFileSync(blob, bytes);
    const r = ktldBuild(tree);
    const fork = r.backend.jobs.find((j) => j.object === "kernel/fork.o");
    assert.ok(fork && fork.action === "compile", "the corrupt native must be rebuilt");
    assert.equal(fs.readFileSync(path.join(tree, "kernel/fork.thinlto-native.o")).equals(bytes), false);
    assert.deepEqual(hashesOf(tree, ".thinlto-native.o"), incremental);
    assert.ok(strings(path.join(tree, "vmlinux")).includes(MARKER));
  });

  test("the vmlinux ktld linked after an edit boots under qemu and prints the edit's marker", () => {
    const mainC = path.join(tree, "init/main.c");
    editFile(mainC, '\tpr_notice("%s", linux_banner);\n', '\tpr_notice("%s", linux_banner);\n\tpr_info("ktld-boot-marker: linked by ktld\\n");\n');
    make(tree, ["init/main.o"]);
    const r = ktldBuild(tree);
    assert.ok(r.backend.jobs.some((j) => j.object === "init/main.o" && j.action === "compile"));
    const out = bootLog(path.join(tree, "vmlinux"));
    assert.match(out, /Linux version 6\.12/, out.slice(-2000));
    assert.match(out, /ktld-boot-marker: linked by ktld/);
  });
});
