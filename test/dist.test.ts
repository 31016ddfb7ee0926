// A tree built in the seed's mode (CONFIG_LTO_CLANG_THIN_DIST, 6.12 + the backport under
// scripts/): ktld imports kbuild's own records, makes the same bytes as the seed's
// `make vmlinux` after the same edit, runs only the BE jobs whose index changed, and
// leaves make nothing of the LTO pipeline to redo.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { importTree } from "../src/kbuild/tree";
import { bootLog, changedKeys, fixtureCopy, hashesOf, ktld, ktldBuild, spawnBounded } from "./helpers";

/** `make vmlinux` as the seed runs it; returns its kbuild lines. */
function makeVmlinux(tree: string): string[] {
  const r = spawnBounded("make", [...MAKE_ARGS, "-j2", "vmlinux"], { cwd: tree, env: fixtureEnv(), encoding: "utf8", maxBuffer: 64 << 20 });
  assert.equal(r.status, 0, r.stderr.slice(-3000));
  return r.stdout.split("\n");
}

/** What make and ktld must agree on, byte for byte: every stage of the seed's pipeline and
 * the vmlinux kbuild's final link makes of it (the fixture pins kbuild's build stamps). */
function outputs(tree: string): Map<string, string> {
  const out = hashesOf(tree, ".thinlto-native.o");
  for (const [k, v] of hashesOf(tree, ".o.thinlto.bc")) out.set(k, v);
  for (const f of ["vmlinux.a", "vmlinux.o", "vmlinux.thinlto-index", "builtin.order", "vmlinux"]) out.set(f, hashFile(path.join(tree, f)) ?? "<missing>");
  return out;
}

function mtimes(tree: string, files: readonly string[]): Map<string, number> {
  return new Map(files.map((f) => [f, fs.statSync(path.join(tree, f)).mtimeMs]));
}

function buildWait(tree: string): { ok: boolean; id: number; backend: { jobs: { object: string; action: string }[] } } {
  const r = spawnBounded(process.execPath, [path.resolve(__dirname, "../client/ktld.js"), "build", "--wait", "--build-dir", tree, "--json"],
    { encoding: "utf8", env: fixtureEnv(), timeout: 600_000 });
  assert.ok(r.stdout, r.stderr);
  return JSON.parse(r.stdout) as ReturnType<typeof buildWait>;
}

describe("a CONFIG_LTO_CLANG_THIN_DIST tree (the seed's mode, backported to 6.12)", { timeout: 30 * 60_000 }, () => {
  const k = fixtureCopy("dist-ktld", "dist");
  const m = fixtureCopy("dist-make", "dist");
  after(() => ktld(["stop", "--build-dir", k]));

  test("the import uses kbuild's records: builtin.order, saved_c_flags_, kbuild's file names", () => {
    const t = importTree(k);
    assert.equal(t.distMode, true);
    const order = fs.readFileSync(path.join(k, "builtin.order"), "utf8").split("\n").filter(Boolean);
    assert.deepEqual(t.objects.map((o) => o.path), order);
    const fork = t.units.get("kernel/fork.o");
    assert.ok(fork?.cmd.savedCFlags, "saved_c_flags_ read");
    assert.ok(!fork.backendFlags.some((f) => f.startsWith("-Wp,-MMD")), "BE flags are the saved ones, not the FE command");
    assert.deepEqual(t.prelinkArchives, ["./built-in.a", "lib/lib.a", "arch/x86/lib/lib.a"]);
  });

  test("a first ktld build takes kbuild's natives as they are: no BE job, same vmlinux.a and vmlinux.o", () => {
    // Settle both copies first: whatever make finds to do after a copy.
    makeVmlinux(k);
    makeVmlinux(m);
    const before = outputs(k);
    const r = ktldBuild(k);
    assert.equal(r.backend.compiled, 0);
    assert.equal(r.backend.unchanged, r.backend.modules);
    assert.deepEqual(changedKeys(before, outputs(k)), []);
  });

  const edits = [
    {
      name: "a one-function edit (start_kernel in init/main.c)",
      file: "init/main.c",
      apply: (s: string) => s.replace('\tpr_notice("%s", linux_banner);\n', '\tpr_notice("%s", linux_banner);\n\tpr_info("ktld-dist-marker\\n");\n'),
    },
    {
      name: "a header edit (include/linux/fs_struct.h, 14 users)",
      file: "include/linux/fs_struct.h",
      apply: (s: string) => s.replace("static inline void get_fs_root(struct fs_struct *fs, struct path *root)\n{\n", "static inline void get_fs_root(struct fs_struct *fs, struct path *root)\n{\n\tbarrier();\n"),
    },
  ];
  for (const e of edits) {
    test(`${e.name}: ktld's natives, indexes, vmlinux.a and vmlinux.o equal the seed's make; BE only where an index changed; make then has nothing to redo`, async () => {
      for (const tree of [k, m]) {
        const f = path.join(tree, e.file);
        const text = fs.readFileSync(f, "utf8");
        assert.notEqual(e.apply(text), text, "the edit applies");
        fs.writeFileSync(f, e.apply(text));
      }
      const makeLines = makeVmlinux(m);
      const makeBE = makeLines.filter((l) => /^\s+CC\s+\S+\.thinlto-native\.o$/.test(l)).length;
      assert.ok(makeBE > 400, `the seed's make re-runs every BE (${makeBE})`);

      const indexBefore = hashesOf(k, ".o.thinlto.bc");
      assert.equal(ktld(["start", "--build-dir", k, "--idle-timeout", "3600"]).status, 0);
      const b = buildWait(k);
      assert.equal(b.ok, true);
      const changedIndex = changedKeys(indexBefore, hashesOf(k, ".o.thinlto.bc")).map((f) => f.replace(/\.thinlto\.bc$/, ""));
      const compiled = b.backend.jobs.filter((j) => j.action === "compile").map((j) => j.object).sort();
      assert.ok(compiled.length > 0 && compiled.length < 60, `BE jobs: ${compiled.length}`);
      assert.deepEqual(compiled, changedIndex, "BE jobs = the modules whose index bytes changed");
      assert.equal(ktld(["stop", "--build-dir", k]).status, 0);

      const want = outputs(m);
      const got = outputs(k);
      assert.deepEqual([...want.keys()].filter((f) => want.get(f) !== got.get(f)), [], "ktld and the seed's make differ");

      // make after ktld: kbuild's descent and checks, none of the LTO pipeline.
      const pipeline = ["vmlinux.thinlto-index", "vmlinux.a", "vmlinux.o", ...compiled.map((o) => o.replace(/\.o$/, ".thinlto-native.o"))];
      const t0 = mtimes(k, pipeline);
      const again = makeVmlinux(k).filter((l) => /thinlto|vmlinux\.a|vmlinux\.o|^\s+(CC|AR|LD)\s/.test(l));
      assert.deepEqual(again, [], "make redid part of what ktld built");
      assert.deepEqual(mtimes(k, pipeline), t0);
    });
  }

  test("the dist-mode vmlinux ktld linked boots and prints the edit's marker", () => {
    const out = bootLog(path.join(k, "vmlinux"));
    assert.match(out, /Linux version 6\.12/, out.slice(-2000));
    assert.match(out, /ktld-dist-marker/);
  });
});
