// Bad input gets a clear one-line error (exit 2), or a failed build (exit 1) with the
// compiler's diagnostics, and loses nothing.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { describe, test } from "node:test";
import { fixtureEnv } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { fixtureCopy, hashesOf, ktld, ktldBuild, make } from "./helpers";

function oneLineError(stderr: string, pattern: RegExp): void {
  const lines = stderr.trim().split("\n");
  assert.equal(lines.length, 1, `expected one line, got:\n${stderr}`);
  assert.match(lines[0], /^ktld: /);
  assert.match(lines[0], pattern);
  assert.doesNotMatch(stderr, /\n\s+at /, "no stack trace");
}

describe("bad input without a kernel tree", { timeout: 10 * 60_000 }, () => {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-bad-"));
  process.on("exit", () => fs.rmSync(tmp, { recursive: true, force: true }));

  test("a missing build dir", () => {
    const r = ktld(["build", "--build-dir", path.join(tmp, "nope")]);
    assert.equal(r.status, 2);
    oneLineError(r.stderr, /does not exist; pass --build-dir/);
  });

  /** `ktld build` in a directory that holds nothing but this .config. */
  const buildWithConfig = (name: string, config: string) => {
    const d = path.join(tmp, name);
    fs.mkdirSync(d);
    fs.writeFileSync(path.join(d, ".config"), config);
    const r = ktld(["build", "--build-dir", d]);
    assert.equal(r.status, 2);
    return { d, r };
  };

  test("a tree that is not a Clang ThinLTO build", () => {
    const { d, r } = buildWithConfig("nolto", "CONFIG_64BIT=y\nCONFIG_X86_64=y\nCONFIG_LTO_NONE=y\n");
    oneLineError(r.stderr, /not a Clang ThinLTO build: run scripts\/config -d LTO_NONE -e LTO_CLANG_THIN/);
    assert.equal(fs.existsSync(path.join(d, ".ktld")), false, "nothing written");
  });

  test("a tree of an arch ktld does not link", () => {
    const { d, r } = buildWithConfig("mips", "CONFIG_MIPS=y\nCONFIG_32BIT=y\nCONFIG_LTO_CLANG_THIN=y\n");
    oneLineError(r.stderr, /a mips tree: ktld links x86_64, .*arm64.* kernels/);
    assert.equal(fs.existsSync(path.join(d, ".ktld")), false, "nothing written");
  });

  test("a ThinLTO tree not built yet", () => {
    const { r } = buildWithConfig("unbuilt", "CONFIG_X86_64=y\nCONFIG_LTO_CLANG_THIN=y\n");
    oneLineError(r.stderr, /not built yet.*make LLVM=1 vmlinux/);
  });

  test("unknown flags, bad -j, unknown commands", () => {
    for (const args of [["build", "--frobnicate"], ["build", "-j", "0"], ["frob"], ["cache", "shred"]]) {
      const r = ktld(args);
      assert.equal(r.status, 2, args.join(" "));
      assert.match(r.stderr, /^ktld: /);
      assert.doesNotMatch(r.stderr, /\n\s+at /);
    }
  });
});

describe("bad input in a kernel tree", { timeout: 20 * 60_000 }, () => {
  const tree = fixtureCopy("bad");
  const forkCmd = path.join(tree, "kernel/.fork.o.cmd");
  const cmdText = fs.readFileSync(forkCmd, "utf8");
  const vmlinuxHash = hashFile(path.join(tree, "vmlinux"));

  test("a truncated .cmd file: one line naming the file and the fix, nothing written", () => {
    fs.writeFileSync(forkCmd, cmdText.slice(0, cmdText.length >> 1));
    const r = ktld(["build", "--build-dir", tree]);
    fs.writeFileSync(forkCmd, cmdText);
    assert.equal(r.status, 2);
    oneLineError(r.stderr, /kernel\/\.fork\.o\.cmd: truncated.*rebuild kernel\/fork\.o with make/);
    assert.equal(fs.existsSync(path.join(tree, ".ktld")), false);
    assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinuxHash);
  });

  test("a garbage .cmd file", () => {
    fs.writeFileSync(forkCmd, "\u0000\u0001garbage\n");
    const r = ktld(["build", "--build-dir", tree]);
    fs.writeFileSync(forkCmd, cmdText);
    assert.equal(r.status, 2);
    oneLineError(r.stderr, /kernel\/\.fork\.o\.cmd: no savedcmd_ line/);
  });

  test("a kernel version ktld does not support (6.6): refused up front, naming the supported ones", () => {
    const release = path.join(tree, "include/config/kernel.release");
    const text = fs.readFileSync(release, "utf8");
    fs.writeFileSync(release, "6.6.63\n");
    const r = ktld(["build", "--build-dir", tree]);
    const s = ktld(["start", "--build-dir", tree]);
    fs.writeFileSync(release, text);
    assert.equal(r.status, 2);
    oneLineError(r.stderr, /is Linux 6\.6\.63; ktld supports Linux 6\.12 and 6\.1 only/);
    assert.equal(s.status, 2, s.stdout + s.stderr);
    assert.match(s.stderr + s.stdout, /Linux 6\.6\.63; ktld supports Linux 6\.12 and 6\.1 only/);
    assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinuxHash);
  });

  /** `ktld build` with nothing on PATH but `tools` (the one a test is about left out). */
  const withoutTool = (tools: readonly string[], pattern: RegExp) => {
    const bin = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-path-"));
    for (const tool of tools) fs.symlinkSync(`/usr/bin/${tool}`, path.join(bin, tool));
    const r = ktld(["build", "--build-dir", tree], { ...fixtureEnv(), PATH: bin });
    fs.rmSync(bin, { recursive: true, force: true });
    assert.equal(r.status, 2);
    oneLineError(r.stderr, pattern);
    assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinuxHash);
  };

  test("clang missing from PATH", () => withoutTool(["make", "ld.lld-19", "sh"], /clang-19 not found on PATH.*apt-get install clang-19/));

  test("a broken .vmlinux.o.cmd (cut short, garbage, gone): one line naming the file and the fix, nothing written", () => {
    const file = path.join(tree, ".vmlinux.o.cmd");
    const text = fs.readFileSync(file, "utf8");
    const cases: [string | null, RegExp][] = [
      [text.slice(0, 120), /\.vmlinux\.o\.cmd: truncated \(no final newline\); rebuild vmlinux\.o with make/],
      ["\u0000\u0001garbage\n", /\.vmlinux\.o\.cmd: no savedcmd_ line .*rebuild vmlinux\.o with make/],
      [null, /not built yet \(no vmlinux\.o\); run make LLVM=1 vmlinux/],
    ];
    const state = path.join(tree, ".ktld");
    const stateFiles = () => (fs.existsSync(state) ? fs.readdirSync(state, { recursive: true }).map(String).sort() : []);
    const before = stateFiles();
    try {
      for (const [bytes, pattern] of cases) {
        if (bytes === null) fs.rmSync(file);
        else fs.writeFileSync(file, bytes);
        const r = ktld(["build", "--build-dir", tree]);
        assert.equal(r.status, 2, r.stderr);
        oneLineError(r.stderr, pattern);
        assert.deepEqual(stateFiles(), before, "a refused build wrote to the state dir");
      }
    } finally {
      fs.writeFileSync(file, text);
    }
    assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinuxHash);
  });

  test("ld.lld missing from PATH", () => withoutTool(["make", "clang-19", "sh"], /ld\.lld-19 not found on PATH .*apt-get install lld-19/));

  test("llvm-ar missing from PATH", () => withoutTool(["make", "clang-19", "ld.lld-19", "sh"], /llvm-ar-19 not found on PATH .*apt-get install llvm-19/));

  test("a failing BE compile shows clang's diagnostics, fails the build, leaves no partial native", () => {
    ktldBuild(tree);
    const natives = hashesOf(tree, ".thinlto-native.o");
    const vmlinux = hashFile(path.join(tree, "vmlinux"));
    // A flag the BE rejects, in fork.o's record only.
    fs.writeFileSync(forkCmd, cmdText.replace(" -c -o kernel/fork.o", " -mllvm -ktld-no-such-option -c -o kernel/fork.o"));
    const r = ktld(["build", "--build-dir", tree, "--json"]);
    assert.equal(r.status, 1, r.stderr);
    const j = JSON.parse(r.stdout) as { ok: boolean; diagnostics: string };
    assert.equal(j.ok, false);
    assert.match(j.diagnostics, /kernel\/fork\.o: BE compile failed/);
    assert.match(j.diagnostics, /ktld-no-such-option/);
    assert.equal(fs.existsSync(path.join(tree, "kernel/fork.thinlto-native.o.ktld-tmp")), false);
    assert.deepEqual(hashesOf(tree, ".thinlto-native.o"), natives);
    assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinux, "vmlinux must not be relinked after a failed BE");
    const text = ktld(["build", "--build-dir", tree]);
    assert.equal(text.status, 1);
    assert.match(text.stderr, /ktld-no-such-option/);
    assert.match(text.stdout, /build FAILED/);
    // Fixing the record: back to the old key, nothing to compile.
    fs.writeFileSync(forkCmd, cmdText);
    const fixed = ktldBuild(tree);
    assert.equal(fixed.backend.compiled, 0);
  });

  test("a tree whose real path has a space: one line naming it and the fix, nothing written", () => {
    // The copy's parent renamed for the test (a rename, not a second copy), then back.
    const parent = path.dirname(tree);
    const spaced = `${parent} with space`;
    const stateOf = (t: string) => (fs.existsSync(path.join(t, ".ktld")) ? fs.readdirSync(path.join(t, ".ktld")).map((f) => `${f} ${fs.statSync(path.join(t, ".ktld", f)).mtimeMs}`).sort() : []);
    const before = stateOf(tree);
    const vmlinux = hashFile(path.join(tree, "vmlinux"));
    fs.renameSync(parent, spaced);
    try {
      const moved = path.join(spaced, path.basename(tree));
      const r = ktld(["build", "--build-dir", moved]);
      assert.equal(r.status, 2, r.stderr);
      oneLineError(r.stderr, /a path with a space or a colon, which kbuild refuses; move the tree/);
      assert.deepEqual(stateOf(moved), before, "the state dir was written");
      assert.equal(hashFile(path.join(moved, "vmlinux")), vmlinux);
      // Behind a symlink without a space it is the same real path: still refused, saying why.
      const link = path.join(os.tmpdir(), `ktld-nospace-${process.pid}`);
      fs.symlinkSync(moved, link);
      try {
        oneLineError(ktld(["build", "--build-dir", link]).stderr, /a symlink does not help/);
      } finally {
        fs.rmSync(link);
      }
    } finally {
      fs.renameSync(spaced, parent);
    }
  });

  test("the tree behind a symlink: built as the tree itself, with the tree's one state dir", () => {
    const link = path.join(os.tmpdir(), `ktld-link-${process.pid}`);
    fs.symlinkSync(tree, link);
    const forkC = path.join(tree, "kernel/fork.c");
    const original = fs.readFileSync(forkC, "utf8");
    const anchor = "void free_task(struct task_struct *tsk)\n{\n";
    try {
      ktldBuild(tree);
      const vmlinuxAfterFirst = hashFile(path.join(tree, "vmlinux"));
      fs.writeFileSync(forkC, original.replace(anchor, `${anchor}\tpr_info("ktld-symlinked-tree\\n");\n`));
      make(tree, ["kernel/fork.o"]);
      const r = ktldBuild(link);
      assert.ok(r.backend.compiled >= 1, JSON.stringify(r.backend));
      assert.ok(fs.readFileSync(path.join(tree, "vmlinux")).includes("ktld-symlinked-tree"), "the edit is not in vmlinux");
      // Back, by the real path: the natives of before come from the one cache both names share.
      fs.writeFileSync(forkC, original);
      make(tree, ["kernel/fork.o"]);
      const back = ktldBuild(tree);
      assert.equal(back.backend.compiled, 0, JSON.stringify(back.backend.jobs));
      assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinuxAfterFirst, "vmlinux is not the one of before the edit");
    } finally {
      fs.writeFileSync(forkC, original);
      fs.rmSync(link);
    }
  });
});
