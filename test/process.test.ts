// The process runner and the job pool: cancel kills exactly the process tree a job
// started, a queued job never starts, a hung child times out. No clang, no kernel.
import { StateDir } from "../src/state";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { JobPool } from "../src/pool";
import { InstanceLock } from "../src/lock";
import { LEDGER_ENV, markedProcesses, reapChildrenOf, runProcess } from "../src/base/process";
import { processesWith, startServer } from "./helpers";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, f: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

describe("process runner", { timeout: 120_000 }, () => {
  test("a cancel kills the whole tree it started (the child and its grandchild), and only that", async () => {
    const tag = `${300 + Math.random()}`.slice(0, 10);
    const other = `${400 + Math.random()}`.slice(0, 10);
    const mine = new AbortController();
    const theirs = new AbortController();
    // sh starts a grandchild and waits: killing sh alone would leave the sleep behind.
    const run = runProcess(["sh", "-c", `sleep ${tag} & wait`], { cwd: "/", signal: mine.signal });
    const bystander = runProcess(["sh", "-c", `sleep ${other} & wait`], { cwd: "/", signal: theirs.signal });
    await until("both trees", () => processesWith(tag).length === 1 && processesWith(other).length === 1);
    mine.abort();
    const r = await run;
    assert.equal(r.cancelled, true);
    await until("the cancelled tree to be gone", () => processesWith(tag).length === 0);
    assert.equal(processesWith(other).length, 1, "the other tree was touched");
    theirs.abort();
    assert.equal((await bystander).cancelled, true);
    await until("the second tree to be gone", () => processesWith(other).length === 0);
  });

  test("a child that runs past its timeout is killed and says so", async () => {
    const tag = `${500 + Math.random()}`.slice(0, 10);
    const t0 = Date.now();
    const r = await runProcess(["sh", "-c", `sleep ${tag} & wait`], { cwd: "/", timeoutMs: 300 });
    assert.equal(r.timedOut, true);
    assert.ok(Date.now() - t0 < 5000);
    await until("the timed-out tree to be gone", () => processesWith(tag).length === 0);
  });

  test("exit status, output, lines, and a command that does not exist", async () => {
    const lines: string[] = [];
    const r = await runProcess(["sh", "-c", "echo one; echo two >&2; echo three; exit 3"], { cwd: "/", onLine: (l) => lines.push(l) });
    assert.equal(r.code, 3);
    assert.deepEqual(lines, ["one", "three"]);
    assert.equal(r.stdout, "one\nthree\n");
    assert.match(r.output, /two/);
    const missing = await runProcess(["ktld-no-such-command"], { cwd: "/" });
    assert.match(missing.error ?? "", /ktld-no-such-command: .*ENOENT/);
  });
});

describe("job pool", { timeout: 120_000 }, () => {
  test("a cancel kills the running job's tree and drops the queued ones before they start", async () => {
    const pool = new JobPool(1);
    try {
      const tag = `${600 + Math.random()}`.slice(0, 10);
      const abort = new AbortController();
      const started = Date.now();
      const jobs = [0, 1, 2].map(() => pool.run({ argv: ["sh", "-c", `sleep ${tag} & wait`], cwd: "/" }, abort.signal));
      await until("the first job", () => processesWith(tag).length === 1);
      abort.abort();
      const results = await Promise.all(jobs);
      assert.deepEqual(results.map((r) => r.cancelled === true), [true, true, true]);
      assert.ok(Date.now() - started < 20_000, "the queued jobs ran");
      await sleep(300);
      assert.deepEqual(processesWith(tag), [], "a job's process survived the cancel");
      // The pool still works after a cancel.
      const ok = await pool.run({ argv: ["true"], cwd: "/" });
      assert.equal(ok.code, 0);
    } finally {
      await pool.close();
    }
  });
});

describe("instance lock", { timeout: 60_000 }, () => {
  test("asking whether the lock is held never makes a process that takes it fail (the start race)", async () => {
    // `ktld start` polls held() while its daemon starts and takes the lock; a probe that took
    // the lock for a moment made the daemon believe another one ran.
    const dir = `/ktld-lock-test-${process.pid}-${Math.random()}`;
    let refused = 0;
    for (let i = 0; i < 200; i++) {
      const probes = Array.from({ length: 10 }, () => InstanceLock.held(dir));
      const lock = await InstanceLock.acquire(dir);
      if (lock) lock.release();
      else refused++;
      await Promise.all(probes);
    }
    assert.equal(refused, 0, `the lock was refused ${refused} times while nobody held it`);
    const lock = await InstanceLock.acquire(dir);
    assert.ok(lock);
    assert.equal(await InstanceLock.held(dir), true);
    assert.equal(await InstanceLock.acquire(dir), null, "a second taker got the lock");
    lock.release();
    await sleep(50);
    assert.equal(await InstanceLock.held(dir), false);
  });

  test("one ktld process per build dir, whatever its state dir: a second state dir on the same tree (or a symlink to it) is refused, and leaves no lock behind", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-lock-"));
    const tree = path.join(root, "out");
    const other = path.join(root, "other");
    fs.mkdirSync(tree);
    fs.mkdirSync(other);
    fs.symlinkSync(tree, path.join(root, "link"));
    const first = await StateDir.open(path.join(root, "a"), tree);
    try {
      await assert.rejects(StateDir.open(path.join(root, "b"), tree), /another ktld process \(a daemon or a build, with another --state-dir\) is using the build dir/);
      await assert.rejects(StateDir.open(path.join(root, "b"), path.join(root, "link")), /is using the build dir/);
      // The refused open let go of b's own lock.
      assert.equal(await InstanceLock.held(path.join(root, "b")), false, "a refused open kept its state dir's lock");
      const beside = await StateDir.open(path.join(root, "c"), other);
      beside.release();
    } finally {
      first.release();
    }
    await sleep(50);
    const again = await StateDir.open(path.join(root, "b"), tree);
    again.release();
    fs.rmSync(root, { recursive: true, force: true });
  });

  test("kill -9 of a ktld leaves its children running, listed in its ledger; the next one to take the lock stops them", async () => {
    const root = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-ledger-"));
    const ledger = path.join(root, "running");
    // A stand-in for ktld: the process runner with a ledger, one child group (sh and a sleep).
    const code = `const p = require(${JSON.stringify(path.resolve(__dirname, "../src/base/process.js"))});
p.setChildLedger(${JSON.stringify(ledger)});
p.runProcess(["sh", "-c", "sleep 120 & sleep 120; wait"], { cwd: "/" });
setInterval(() => {}, 1000);`;
    const ktldLike = startServer(process.execPath, ["-e", code], 60_000);
    let pgid = 0;
    for (let i = 0; i < 100 && !pgid; i++) {
      await sleep(50);
      pgid = Number((fs.existsSync(ledger) ? fs.readdirSync(ledger) : [])[0] ?? 0);
    }
    assert.ok(pgid > 0, "the child was not listed in the ledger");
    const groupAlive = () => {
      try {
        process.kill(-pgid, 0);
        return true;
      } catch {
        return false;
      }
    };
    ktldLike.kill();
    await ktldLike.exited;
    // The blow landed on the parent only: its children run on.
    assert.equal(groupAlive(), true, "the child group died with its parent: nothing to prove");
    assert.equal(reapChildrenOf(ledger), 1);
    assert.equal(groupAlive(), false, "the child group still runs after the reap");
    assert.deepEqual(fs.readdirSync(ledger), []);
    // An entry whose id is now another process's (another start time) is left alone.
    const other = startServer("sleep", ["60"], 60_000);
    fs.writeFileSync(path.join(ledger, String(other.pid)), "1");
    assert.equal(reapChildrenOf(ledger), 0);
    assert.doesNotThrow(() => process.kill(other.pid, 0), "a process the ledger did not start was killed");
    other.kill();
    // A child no file names (ktld killed between its spawn and its entry) is found by the
    // mark in its environment; one marked for another ledger is left alone.
    const unlisted = startServer("sleep", ["60"], 60_000, { env: { ...process.env, [LEDGER_ENV]: ledger } });
    const foreign = startServer("sleep", ["60"], 60_000, { env: { ...process.env, [LEDGER_ENV]: `${ledger}2` } });
    await sleep(100);
    assert.deepEqual(markedProcesses(ledger), [unlisted.pid], "the marked child is not found by its mark");
    assert.deepEqual(fs.readdirSync(ledger), [], "the child to find is named by a file: nothing to prove");
    assert.equal(reapChildrenOf(ledger), 1);
    assert.equal(await unlisted.exited, null, "the marked child was not killed");
    assert.doesNotThrow(() => process.kill(foreign.pid, 0), "a process marked for another ledger was killed");
    foreign.kill();
    fs.rmSync(root, { recursive: true, force: true });
  });

});
