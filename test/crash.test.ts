// kill -9 at named points (src/base/killpoint.ts), each aimed, each proven to have landed.
//
// For every point a build passes on the thin fixture: the daemon is started with KTLD_KILL_AT
// naming it, a function body is edited, and the daemon must die there (its own line in
// KTLD_KILL_LOG, with its pid, and the process gone). A fresh daemon then starts on the same
// state dir and builds (what the dead one left running frozen until then: the new one must
// stop it). Afterwards: the killed build is in no history, nothing a killed ktld started
// still runs, no temp file is left, every cached blob is filed under its own
// hash, every native equals the one the seed's recipe makes from kbuild's records
// (test/reference.ts, no ktld code), and vmlinux equals what kbuild's own vmlinux.o command
// over those natives and kbuild's own make then make of it.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { buildWait, daemonStatus, diedAt, fixtureCopy, ktld, processesIn, spawnBounded, THIN_KILL_POINTS } from "./helpers";
import { assertKbuildLink, referenceNatives } from "./reference";

/** Every point this many times (`KTLD_CRASH_ROUNDS`, for a long run; CI goes through each once). */
const ROUNDS = Math.max(1, Number.parseInt(process.env.KTLD_CRASH_ROUNDS ?? "1", 10) || 1);
const FORK_ANCHOR = "void free_task(struct task_struct *tsk)\n{\n";
/** The kill points after which vmlinux is also compared with kbuild's own link. */
const LINK_SIDE = /^(link:|baseline:|archive:)/;
const signal = (pid: number, sig: NodeJS.Signals) => {
  try {
    process.kill(pid, sig);
  } catch { /* gone */ }
};
/** A live process (a zombie is not). */
const alive = (pid: number) => {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
};

interface Status { pid: number; history: { id: number; ok: boolean }[] }

/** Files whose name says ktld wrote them to rename later. */
function tempFiles(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) {
        if (e.name !== "source" && !(d === dir && e.name === ".git")) walk(p);
      } else if (/\.ktld-tmp$|\.tmp-\d+$/.test(e.name)) out.push(path.relative(dir, p));
    }
  };
  walk(dir);
  return out.sort();
}

/** Blobs (cached natives) whose bytes are not the hash they are filed under. */
function wrongBlobs(stateDir: string): string[] {
  const root = path.join(stateDir, "blobs");
  const out: string[] = [];
  for (const shard of fs.readdirSync(root)) {
    if (!/^[0-9a-f]{2}$/.test(shard)) continue;
    for (const name of fs.readdirSync(path.join(root, shard))) {
      if (hashFile(path.join(root, shard, name)) !== name) out.push(`${shard}/${name}`);
    }
  }
  return out;
}

function nativesOf(tree: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of fs.readdirSync(path.join(tree, d), { withFileTypes: true })) {
      const p = d ? `${d}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (!e.name.startsWith(".") && e.name !== "source") walk(p);
      } else if (e.name.endsWith(".thinlto-native.o")) out.set(p.replace(/\.thinlto-native\.o$/, ".o"), hashFile(path.join(tree, p))!);
    }
  };
  walk("");
  return out;
}

describe("kill -9 at every named point of a build", { timeout: ROUNDS * 60 * 60_000 }, () => {
  const tree = fixtureCopy("crash");
  const stateDir = path.join(tree, ".ktld");
  const killLog = path.join(path.dirname(tree), "kill.log");
  const armFile = path.join(path.dirname(tree), "kill.armed");
  const env = fixtureEnv();
  const forkC = path.join(tree, "kernel/fork.c");
  const original = fs.readFileSync(forkC, "utf8");
  const memo = new Map<string, string>();
  /** Processes the test froze; killed at the end should a ktld have failed to. */
  const frozen: number[] = [];
  after(() => {
    ktld(["stop", "--build-dir", tree], env);
    for (const p of frozen) signal(p, "SIGKILL");
  });

  const start = (extra: NodeJS.ProcessEnv = {}) => {
    const r = ktld(["start", "--build-dir", tree, "--idle-timeout", "3600", "-j2"], { ...env, ...extra });
    assert.equal(r.status, 0, r.stderr);
    return daemonStatus<Status>(tree, env).pid;
  };

  /** The newest build in history when a round starts (its daemon stopped). */
  let lastId = 0;
  test("the first build of the copy (the state every round starts from)", () => {
    // Settle the copy: what make finds to do after a copy (its tool records are moved to the
    // copy, scripts/fixture.ts, so objtool is not rebuilt and vmlinux.o not relinked).
    const settle = spawnBounded("make", [...MAKE_ARGS, "-s", "vmlinux"], { cwd: tree, env, timeout: 20 * 60_000 });
    assert.equal(settle.status, 0, settle.stderr.slice(-3000));
    start();
    const b = buildWait(tree, env);
    assert.equal(b.ok, true, b.error);
    lastId = b.id;
    ktld(["stop", "--build-dir", tree], env);
  });

  let round = 0;
  const confirmed = new Map<string, number>();
  for (let pass = 1; pass <= ROUNDS; pass++) for (const point of THIN_KILL_POINTS) {
    test(`killed at ${point}${ROUNDS > 1 ? ` (round ${pass} of ${ROUNDS})` : ""}: the next build completes it, equal to kbuild's`, async () => {
      round++;
      // A round that failed may have left its daemon running: this round's must be its own.
      ktld(["stop", "--build-dir", tree], env);
      fs.rmSync(killLog, { force: true });
      fs.rmSync(armFile, { force: true });
      const pid = start({ KTLD_KILL_AT: point, KTLD_KILL_LOG: killLog, KTLD_KILL_ARM: armFile });
      // Armed once the daemon's startup is over: the build hit is the edit's.
      assert.equal(buildWait(tree, env).ok, true);
      fs.writeFileSync(armFile, "");
      // A new body each round: new bitcode, index, native, archive member size, vmlinux.
      fs.writeFileSync(forkC, original.replace(FORK_ANCHOR, `${FORK_ANCHOR}\tpr_info("ktld crash round ${round} ${"x".repeat(round)}\\n");\n`));
      await diedAt(pid, point, killLog);
      confirmed.set(point, (confirmed.get(point) ?? 0) + 1);

      // What the dead daemon left running (a linker, make) is frozen where it is: the next
      // ktld must stop it when it takes the lock, not find it finished by luck.
      const left = processesIn(tree);
      for (const p of left) signal(p, "SIGSTOP");
      frozen.push(...left);
      // The same state dir, no kill point: it must finish the edit's build.
      const now = start();
      assert.deepEqual(left.filter(alive), [], "processes the killed daemon left running still run after a new ktld took the lock");
      const b = buildWait<{ id: number; ok: boolean; error?: string }>(tree, env);
      assert.equal(b.ok, true, b.error);
      const st = daemonStatus<Status>(tree, env);
      assert.equal(st.pid, now);
      // The killed build was never recorded: every id after the last one before it is the new daemon's.
      const newer = st.history.filter((h) => h.id > lastId);
      // Killed after the baseline's commit, the build's work was all done and recorded as the
      // files' state: there is nothing to build again (the references below say if that is so).
      const expectBuild = point !== "baseline:after-commit";
      assert.ok(newer.length >= (expectBuild ? 1 : 0) && newer.every((h) => h.ok), `history after the crash: ${JSON.stringify(newer)}`);
      lastId = st.history[0].id;
      ktld(["stop", "--build-dir", tree], env);
      assert.deepEqual(processesIn(tree), [], "a process of the killed or the stopped ktld still runs in the tree");
      assert.deepEqual(tempFiles(tree), [], "temp files left in the build dir or the state dir");
      assert.deepEqual(wrongBlobs(stateDir), [], "cached natives whose bytes are not their name");

      const want = await referenceNatives(tree, path.join(path.dirname(tree), "reference"), 2, "vmlinux.o", memo);
      const have = nativesOf(tree);
      const wrong = [...want].filter(([o, h]) => have.get(o) !== h).map(([o]) => o);
      assert.deepEqual(wrong, [], "natives that are not the recipe's");
      // kbuild's own vmlinux.o command over those natives, then kbuild's make of vmlinux, where
      // the kill could leave the link's inputs or outputs wrong (the archive, each link step, the
      // baseline around the link); before the natives are in place, the natives' check above is
      // the one that can fail, and the link's rounds check what follows from them.
      if (!LINK_SIDE.test(point)) return;
      await assertKbuildLink(tree, env, MAKE_ARGS);
      // What make wrote (utsversion.h, the link's temp files) is seen by a daemon now, not by
      // the next round's, whose first pass of a point must be its edit's build.
      start();
      assert.equal(buildWait(tree, env).ok, true);
      lastId = daemonStatus<Status>(tree, env).history[0].id;
      ktld(["stop", "--build-dir", tree], env);
    });
  }

  if (ROUNDS > 1) test(`the long run: every point's kill confirmed ${ROUNDS} times`, (t) => {
    t.diagnostic(`${[...confirmed.values()].reduce((a, b) => a + b, 0)} confirmed kills: ${[...confirmed].map(([p, n]) => `${p} ${n}`).join(", ")}`);
    assert.deepEqual([...THIN_KILL_POINTS].filter((p) => confirmed.get(p) !== ROUNDS), [], "points whose kills were not all confirmed");
  });

  // SIGTERM, SIGINT and SIGHUP mid-build (sent by the daemon to itself at a named point, so
  // the moment is known): it stops by itself, its children with it, and the next daemon
  // finishes the edit.
  for (const [sig, point] of [["SIGTERM", "native:tree-write"], ["SIGINT", "link:LD vmlinux.o"], ["SIGHUP", "thin-link:publish"]] as const) {
    test(`${sig} at ${point}: the daemon stops, leaving nothing running, and the next build completes the edit`, async () => {
      round++;
      // A round that failed may have left its daemon running: this round's must be its own.
      ktld(["stop", "--build-dir", tree], env);
      fs.rmSync(killLog, { force: true });
      fs.rmSync(armFile, { force: true });
      const pid = start({ KTLD_KILL_AT: point, KTLD_KILL_LOG: killLog, KTLD_KILL_ARM: armFile, KTLD_KILL_WITH: sig });
      assert.equal(buildWait(tree, env).ok, true);
      fs.writeFileSync(armFile, "");
      fs.writeFileSync(forkC, original.replace(FORK_ANCHOR, `${FORK_ANCHOR}\tpr_info("ktld crash round ${round} ${"x".repeat(round)}\\n");\n`));
      await diedAt(pid, point, killLog);
      // It stopped as a stop does (its own last line), not by the signal's default action.
      assert.match(fs.readFileSync(path.join(stateDir, "daemon.log"), "utf8"), /\[DAEMON\] stopped\s*$/);
      assert.deepEqual(processesIn(tree), [], "the stopped daemon left processes running in the tree");
      start();
      const b = buildWait<{ id: number; ok: boolean; error?: string }>(tree, env);
      assert.equal(b.ok, true, b.error);
      lastId = b.id;
      ktld(["stop", "--build-dir", tree], env);
      assert.deepEqual(tempFiles(tree), [], "temp files left in the build dir or the state dir");
      assert.deepEqual(wrongBlobs(stateDir), [], "cached natives whose bytes are not their name");
      const want = await referenceNatives(tree, path.join(path.dirname(tree), "reference"), 2, "vmlinux.o", memo);
      const have = nativesOf(tree);
      assert.deepEqual([...want].filter(([o, h]) => have.get(o) !== h).map(([o]) => o), [], "natives that are not the recipe's");
    });
  }

});
