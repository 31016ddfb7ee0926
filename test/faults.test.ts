// Faults ktld must survive without linking a wrong object or dying silently: compilers
// that lie, a damaged store, a full state dir, a read-only build dir.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv } from "../scripts/fixture";
import { hashFile, isWholeElf64 } from "../src/base/hash";
import { which } from "../src/toolchain";
import { editFile, execBounded, fixtureCopy, hashesOf, ktld, ktldBuild, make, prng, spawnBounded } from "./helpers";

const NO_STACK = /^\s+at .+\(.*:\d+:\d+\)$/m;

function blobs(stateDir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (!e.isDirectory()) out.push(p);
      else if (e.name !== "by-key") walk(p); // the notes beside the blobs
    }
  };
  walk(path.join(stateDir, "blobs"));
  return out;
}

/** Every cached native is a whole ELF object whose bytes match its name. */
function assertCacheSound(stateDir: string): void {
  for (const b of blobs(stateDir)) {
    if (b.includes(".tmp-")) continue;
    assert.ok(isWholeElf64(fs.readFileSync(b)), `${b}: not a whole ELF object in the cache`);
    assert.equal(hashFile(b), path.basename(b), `${b}: bytes do not match the name`);
  }
}

function storeFile(stateDir: string): string {
  const p = path.join(stateDir, "store");
  return fs.statSync(p).isDirectory() ? path.join(p, "data.mdb") : p;
}

describe("faults", { timeout: 30 * 60_000 }, () => {
  const tree = fixtureCopy("faults");
  const state = path.join(tree, ".ktld");
  const forkC = path.join(tree, "kernel/fork.c");
  const ANCHOR = "void free_task(struct task_struct *tsk)\n{\n";
  let good: Map<string, string>;
  const mounts: string[] = [];
  const temps: string[] = [];
  /** A temp dir of this suite's, removed when it ends (a mount point once unmounted). */
  const tempDir = (prefix: string) => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    temps.push(d);
    return d;
  };
  after(() => {
    for (const m of mounts.reverse()) spawnBounded("umount", ["-l", m]);
    // A dir still mounted (an umount that failed) is left alone: removing it would reach
    // into what is mounted there (for the read-only test, the fixture copy itself).
    const mounted = new Set(fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n").map((l) => l.split(" ")[4]));
    for (const d of temps) if (!mounted.has(d)) fs.rmSync(d, { recursive: true, force: true });
  });

  test("reference: a correct build after an edit", () => {
    editFile(forkC, ANCHOR, `${ANCHOR}\tpr_info("ktld-faults\\n");\n`);
    make(tree, ["kernel/fork.o"]);
    assert.equal(ktldBuild(tree).ok, true);
    good = hashesOf(tree, ".thinlto-native.o");
    good.set("vmlinux", hashFile(path.join(tree, "vmlinux"))!);
  });

  test("a compiler that exits 0 with a truncated native, and one that changes its input while it runs: the build fails naming both, nothing wrong is cached or linked", () => {
    const real = which("clang-19");
    assert.ok(real);
    const bin = tempDir("ktld-fakecc-");
    // Passes through to the real clang, except for two BE jobs.
    fs.writeFileSync(path.join(bin, "clang-19"), `#!/bin/bash
out=""; prev=""; for a in "$@"; do [ "$prev" = "-o" ] && out="$a"; prev="$a"; done
case "$*" in
  *"-x ir"*"kernel/fork.o") "${real}" "$@" || exit; truncate -s 4096 "$out"; exit 0;;
  *"-x ir"*"kernel/exit.o") "${real}" "$@" || exit; printf 'x' >> kernel/exit.o.thinlto.bc; exit 0;;
  *) exec "${real}" "$@";;
esac
`, { mode: 0o755 });
    const vmlinuxBefore = hashFile(path.join(tree, "vmlinux"));
    const env = { ...fixtureEnv(), PATH: `${bin}:${process.env.PATH}` };
    const r = ktld(["build", "--build-dir", tree, "--json"], env);
    assert.equal(r.status, 1, r.stderr);
    const report = JSON.parse(r.stdout) as { ok: boolean; error: string; diagnostics: string };
    assert.equal(report.ok, false);
    assert.match(report.diagnostics, /kernel\/fork\.o: BE compile failed \(.*(ELF|truncated|whole).*\)/i);
    assert.match(report.diagnostics, /kernel\/exit\.o: inputs changed during the BE compile/);
    assert.doesNotMatch(r.stderr, NO_STACK);
    assert.equal(hashFile(path.join(tree, "vmlinux")), vmlinuxBefore, "a failed build must not relink");
    assertCacheSound(state);

    // The real compiler again: the tampered index is noticed and remade, and the result
    // is the reference's, byte for byte.
    const again = ktldBuild(tree);
    assert.equal(again.ok, true);
    const now = hashesOf(tree, ".thinlto-native.o");
    now.set("vmlinux", hashFile(path.join(tree, "vmlinux"))!);
    assert.deepEqual([...good.keys()].filter((k) => good.get(k) !== now.get(k)), []);
    assertCacheSound(state);
  });

  test("the LMDB store cut short, or with bytes flipped, and a source edited: ktld says so or does not care, rebuilds, and the result is the reference's", () => {
    // Two source states, each with its reference (a build with the store whole); each round
    // damages the store and moves to the other state, so a build that does nothing fails.
    const variants = [fs.readFileSync(forkC, "utf8"), fs.readFileSync(forkC, "utf8").replace("ktld-faults", "ktld-faults-other")];
    const setVariant = (v: number) => {
      fs.writeFileSync(forkC, variants[v]);
      make(tree, ["kernel/fork.o"]);
    };
    const resultOf = () => {
      const now = hashesOf(tree, ".thinlto-native.o");
      now.set("vmlinux", hashFile(path.join(tree, "vmlinux"))!);
      return now;
    };
    setVariant(1);
    assert.equal(ktldBuild(tree).ok, true);
    const refs = [good, resultOf()];
    assert.notEqual(refs[1].get("vmlinux"), refs[0].get("vmlinux"), "the second state's vmlinux is the first's");
    setVariant(0);
    assert.equal(ktldBuild(tree).ok, true);
    const rnd = prng(0x5eed);
    for (let round = 0; round < 6; round++) {
      const v = (round + 1) % 2;
      const file = storeFile(state);
      const size = fs.statSync(file).size;
      if (round % 3 === 0) {
        fs.truncateSync(file, Math.floor(size * rnd() * 0.9));
      } else {
        const fd = fs.openSync(file, "r+");
        for (let i = 0; i < 200; i++) {
          const at = Math.floor(rnd() * size);
          const b = Buffer.alloc(1);
          fs.readSync(fd, b, 0, 1, at);
          b[0] ^= 1 + Math.floor(rnd() * 255);
          fs.writeSync(fd, b, 0, 1, at);
        }
        fs.closeSync(fd);
      }
      setVariant(v);
      const r = ktld(["build", "--build-dir", tree, "--json"]);
      assert.ok(r.status === 0 || r.status === 1 || r.status === 2, `round ${round}: died by a signal (${r.status})\n${r.stderr}`);
      assert.doesNotMatch(r.stderr, NO_STACK, `round ${round}`);
      if (r.status !== 0) {
        // A clear one-line error; the next build copes.
        assert.match(r.stderr, /^ktld: /m, `round ${round}: ${r.stderr}`);
        const r2 = ktld(["build", "--build-dir", tree, "--json"]);
        assert.equal(r2.status, 0, `round ${round}, the build after: ${r2.stderr}`);
      }
      const now = resultOf();
      assert.deepEqual([...refs[v].keys()].filter((k) => refs[v].get(k) !== now.get(k)), [], `round ${round} (source state ${v})`);
    }
    assert.equal(fs.readFileSync(forkC, "utf8"), variants[0]);
    assertCacheSound(state);
  });

  test("a full disk under the state dir: a warning, the build goes on, vmlinux is right", (t) => {
    const small = tempDir("ktld-full-");
    const m = spawnBounded("mount", ["-t", "tmpfs", "-o", "size=6m", "tmpfs", small]);
    if (m.status !== 0) {
      // Root (as CI runs) can: there a failed mount fails the test.
      assert.notEqual(process.getuid?.(), 0, `mount -t tmpfs failed as root: ${m.stderr}`);
      t.skip("cannot mount a tmpfs here (needs root)");
      return;
    }
    mounts.push(small);
    // Fill some of it: the thin-link still fits, the cache and the store soon do not.
    execBounded("dd", ["if=/dev/zero", `of=${path.join(small, "filler")}`, "bs=1M", "count=1"], { stdio: "ignore" });
    // The reference for the edit: a build with the tree's own state dir.
    editFile(forkC, "ktld-faults", "ktld-faulty");
    make(tree, ["kernel/fork.o"]);
    assert.equal(ktldBuild(tree).ok, true);
    const want = hashFile(path.join(tree, "vmlinux"));
    assert.notEqual(want, good.get("vmlinux"));
    // Back to the reference's sources, then the edit again, built with the full state dir.
    editFile(forkC, "ktld-faulty", "ktld-faults");
    make(tree, ["kernel/fork.o"]);
    assert.equal(ktldBuild(tree).ok, true);
    editFile(forkC, "ktld-faults", "ktld-faulty");
    make(tree, ["kernel/fork.o"]);
    const r = ktld(["build", "--build-dir", tree, "--state-dir", path.join(small, "state"), "--json"]);
    assert.doesNotMatch(r.stderr, NO_STACK);
    // Either the build goes on without caching, and its vmlinux is the reference's, or it
    // stops saying why (the thin-link's staging dir is in the state dir where no tmpfs is) and leaves
    // vmlinux as it was.
    if (r.status === 0) {
      assert.match(r.stderr, /no room in the state dir .*not being cached/);
      assert.equal(hashFile(path.join(tree, "vmlinux")), want, "the full-disk build's vmlinux is not the reference's");
    } else {
      assert.equal(r.status, 1, r.stderr);
      assert.match((JSON.parse(r.stdout) as { error: string }).error, /no space left .*state dir.*--state-dir/);
      assert.equal(hashFile(path.join(tree, "vmlinux")), good.get("vmlinux"), "a failed build changed vmlinux");
    }
    // And the tree's own state dir still builds it right.
    editFile(forkC, "ktld-faulty", "ktld-faults");
    make(tree, ["kernel/fork.o"]);
    const back = ktldBuild(tree);
    assert.equal(back.ok, true);
    assert.equal(hashFile(path.join(tree, "vmlinux")), good.get("vmlinux"));
  });

  test("a read-only build dir: one line saying so, nothing written", (t) => {
    const ro = tempDir("ktld-ro-");
    const bind = spawnBounded("mount", ["--bind", tree, ro]);
    if (bind.status !== 0) {
      assert.notEqual(process.getuid?.(), 0, `mount --bind failed as root: ${bind.stderr}`);
      t.skip("cannot bind-mount here (needs root)");
      return;
    }
    mounts.push(ro);
    assert.equal(spawnBounded("mount", ["-o", "remount,ro,bind", ro]).status, 0);
    const before = hashFile(path.join(tree, "vmlinux"));
    const r = ktld(["build", "--build-dir", ro, "--state-dir", tempDir("ktld-ro-state-")]);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /^ktld: build dir .* read-only .*EROFS/m);
    assert.doesNotMatch(r.stderr, NO_STACK);
    const withState = ktld(["build", "--build-dir", ro]);
    assert.equal(withState.status, 2);
    assert.match(withState.stderr, /^ktld: .*(read-only|EROFS)/m);
    assert.equal(hashFile(path.join(tree, "vmlinux")), before);
    spawnBounded("umount", [ro]);
    mounts.pop();
  });
});
