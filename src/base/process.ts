// The one process runner (ninja's SubprocessSet): every child ktld starts, on the main
// thread or in a pool worker, goes through `runProcess`. Each child is the leader of its
// own process group, so a cancel or a timeout kills exactly what it started (the compiler
// and whatever it spawned, make and its sub-makes), never a process found by scanning.
// Waiting never blocks the event loop.
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { BuildFailure, Cancelled, KtldError } from "./errors";
import { toolRun } from "./profile";

export interface RunOptions {
  readonly cwd: string;
  readonly env?: NodeJS.ProcessEnv;
  /** Aborted: the child's process group is killed and the result says `cancelled`. */
  readonly signal?: AbortSignal;
  /** Past this, the group is killed and the result says `timedOut`. */
  readonly timeoutMs?: number;
  /** Each complete line of stdout as it arrives (kbuild's progress from make). */
  readonly onLine?: (line: string) => void;
  /** What the profile calls this run (default: the command's name). */
  readonly tool?: string;
}

export interface ProcessResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  /** stdout and stderr together, as the child printed them. */
  readonly output: string;
  /** stdout alone (a command whose output is data, like fixdep's). */
  readonly stdout: string;
  readonly ms: number;
  /** It could not be started (e.g. ENOENT): the message names the command. */
  readonly error?: string;
  readonly cancelled?: boolean;
  readonly timedOut?: boolean;
}

/** Process groups started and not yet reaped, of this thread. */
const running = new Set<number>();

function killGroup(pid: number): void {
  try {
    process.kill(-pid, "SIGKILL");
  } catch {
    // already gone
  }
}

// The ledger of running children: one file per process group (named by its id, holding its
// leader's start time) in a directory of the state dir. The kernel drops ktld's lock when
// ktld dies, even by kill -9, but not the process groups it started: a make of the final
// link would go on writing the build dir beside the next ktld. The next ktld to take the lock
// kills what the ledger names (reapChildrenOf) before it starts anything.
//
// A file can only be written once the child has its pid, and a kill in between (a pool
// worker spawns its next job just as the main thread takes the last one's result) leaves a
// child no file names. So every child also carries the ledger's path in its environment
// (LEDGER_ENV, inherited by whatever it starts), and the reaper kills every process that
// carries it too.
let ledger: string | undefined;

/** The environment variable that marks a process as started by the ktld of a ledger. */
export const LEDGER_ENV = "KTLD_CHILD_OF";

/** Where this thread records its children (the state dir's; each pool worker sets it too). */
export function setChildLedger(dir: string | undefined): void {
  ledger = dir;
  if (dir) fs.mkdirSync(dir, { recursive: true });
}

/** `env` with this thread's ledger mark, for a child started other than by runProcess. */
export function markedEnv(env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  return ledger ? { ...env, [LEDGER_ENV]: ledger } : env;
}

/** The fields of /proc/<pid>/stat after the command's closing parenthesis (the 3rd field of
 * the man page is the first here), or undefined if the process is gone. */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  } catch {
    return undefined;
  }
}

/** A process's start time (clock ticks since boot, field 22), or undefined if it is gone. */
function startTime(pid: number): string | undefined {
  return statFields(pid)?.[19];
}

/** A process's group id (field 5), or undefined once it is gone. */
function groupOf(pid: number): number | undefined {
  const f = statFields(pid);
  return f ? Number(f[2]) : undefined;
}

function groupAlive(pgid: number): boolean {
  try {
    process.kill(-pgid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

function record(pid: number): void {
  if (!ledger) return;
  const t = startTime(pid);
  try {
    if (t) fs.writeFileSync(path.join(ledger, String(pid)), t);
  } catch {
    // No room to note it: the child is only not reaped should ktld be killed.
  }
}

function unrecord(pid: number): void {
  if (ledger) fs.rmSync(path.join(ledger, String(pid)), { force: true });
}

/** Kills the process groups a ktld that died left running (the ledger in `dir`) and waits,
 * up to `waitMs`, until they are gone; returns how many groups were still there. A group
 * whose leader is another process now (its id reused) is left alone; one whose leader is
 * gone but whose members run is still the group ktld made (Linux gives no new process the
 * id of a live group). */
export function reapChildrenOf(dir: string, waitMs = 10_000): number {
  let names: string[];
  try {
    names = fs.readdirSync(dir);
  } catch {
    names = [];
  }
  const killed: number[] = [];
  for (const name of names) {
    const pgid = Number(name);
    const file = path.join(dir, name);
    if (!Number.isInteger(pgid) || pgid <= 1) {
      fs.rmSync(file, { force: true });
      continue;
    }
    let noted = "";
    try {
      noted = fs.readFileSync(file, "utf8").trim();
    } catch {
      // unreadable: judged by the group alone
    }
    const now = startTime(pgid);
    if ((now === undefined || now === noted) && groupAlive(pgid)) {
      killGroup(pgid);
      killed.push(pgid);
    }
    fs.rmSync(file, { force: true });
  }
  // The ones no file names: found by the mark in their environment. Members of a group just
  // killed may not have died yet: they are that group's, not counted again.
  const marked = markedProcesses(dir).filter((pid) => !killed.includes(groupOf(pid) ?? pid));
  for (const pid of marked) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // gone meanwhile
    }
  }
  const until = Date.now() + waitMs;
  const nap = new Int32Array(new SharedArrayBuffer(4));
  while ((killed.some(groupAlive) || marked.some(running_)) && Date.now() < until) Atomics.wait(nap, 0, 0, 50);
  return killed.length + marked.length;
}

/** A process that exists and is not a zombie (a zombie waits for a parent that may never
 * reap it: it runs nothing). */
function running_(pid: number): boolean {
  const state = statFields(pid)?.[0];
  return state !== undefined && state !== "Z";
}

/** Whether process `pid`'s environment has the mark of ledger `dir`. */
function carriesMark(pid: string, dir: string): boolean {
  let env: Buffer;
  try {
    env = fs.readFileSync(`/proc/${pid}/environ`);
  } catch {
    return false;
  }
  const at = env.indexOf(`${LEDGER_ENV}=${dir}\0`);
  return at === 0 || (at > 0 && env[at - 1] === 0);
}

/** The pids in /proc, this process's left out. */
function otherPids(): string[] {
  try {
    return fs.readdirSync("/proc").filter((p) => /^\d+$/.test(p) && Number(p) !== process.pid);
  } catch {
    return [];
  }
}

/** `make` processes working in one of `dirs` that the ktld of ledger `ledgerDir` did not
 * start (the user's own make, run beside the daemon): their pids. */
export function foreignMakesIn(dirs: readonly string[], ledgerDir: string): number[] {
  const roots = dirs.map((d) => {
    try {
      return fs.realpathSync(d);
    } catch {
      return d;
    }
  });
  const out: number[] = [];
  for (const p of otherPids()) {
    try {
      const comm = fs.readFileSync(`/proc/${p}/comm`, "utf8").trim();
      if (comm !== "make" && comm !== "gmake") continue;
      const cwd = fs.readlinkSync(`/proc/${p}/cwd`);
      if (!roots.some((r) => cwd === r || cwd.startsWith(`${r}/`)) || !running_(Number(p))) continue;
      if (!carriesMark(p, ledgerDir)) out.push(Number(p));
    } catch {
      // gone, or not ours to read
    }
  }
  return out;
}

/** The processes (other than this one) whose environment says the ktld of ledger `dir`
 * started them. */
export function markedProcesses(dir: string): number[] {
  const out: number[] = [];
  for (const p of otherPids()) if (carriesMark(p, dir) && running_(Number(p))) out.push(Number(p));
  return out;
}

/** Kills every child this thread started and that still runs (at exit). */
export function killAllChildren(): void {
  for (const pid of running) killGroup(pid);
}

export function runProcess(argv: readonly string[], opts: RunOptions): Promise<ProcessResult> {
  const t0 = performance.now();
  const [cmd, ...args] = argv;
  return new Promise((resolve) => {
    if (opts.signal?.aborted) {
      resolve({ code: null, signal: null, output: "", stdout: "", ms: 0, cancelled: true });
      return;
    }
    const ended = toolRun(opts.tool ?? path.basename(cmd));
    const child = spawn(cmd, args, { cwd: opts.cwd, env: markedEnv(opts.env ?? process.env), stdio: ["ignore", "pipe", "pipe"], detached: true });
    const chunks: Buffer[] = [];
    const outChunks: Buffer[] = [];
    let cancelled = false;
    let timedOut = false;
    let partial = "";
    const kill = () => {
      if (child.pid !== undefined) killGroup(child.pid);
    };
    const onAbort = () => {
      cancelled = true;
      kill();
    };
    const timer = opts.timeoutMs ? setTimeout(() => {
      timedOut = true;
      kill();
    }, opts.timeoutMs) : undefined;
    if (child.pid !== undefined) {
      running.add(child.pid);
      record(child.pid);
    }
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.stdout.on("data", (d: Buffer) => {
      chunks.push(d);
      outChunks.push(d);
      if (!opts.onLine) return;
      const lines = (partial + d.toString()).split("\n");
      partial = lines.pop() ?? "";
      for (const l of lines) if (l.trim()) opts.onLine(l);
    });
    child.stderr.on("data", (d: Buffer) => chunks.push(d));
    const finish = (r: Omit<ProcessResult, "ms" | "cancelled" | "timedOut">) => {
      clearTimeout(timer);
      ended();
      opts.signal?.removeEventListener("abort", onAbort);
      if (child.pid !== undefined) {
        running.delete(child.pid);
        unrecord(child.pid);
      }
      resolve({ ...r, ms: performance.now() - t0, ...(cancelled ? { cancelled } : {}), ...(timedOut ? { timedOut } : {}) });
    };
    child.on("error", (e) => finish({ code: null, signal: null, output: "", stdout: "", error: `${cmd}: ${e.message}` }));
    child.on("close", (code, signal) => finish({ code, signal, output: Buffer.concat(chunks).toString("utf8"), stdout: Buffer.concat(outChunks).toString("utf8") }));
  });
}

/** A command's one-line description, for timeouts and failures. */
export function describeArgv(argv: readonly string[]): string {
  const line = argv.join(" ");
  return line.length > 300 ? `${line.slice(0, 300)}...` : line;
}

/** Runs one step of a build: a failure becomes a BuildFailure with the output, an abort
 * Cancelled, a timeout a BuildFailure that names the command. */
export async function runStep(
  cwd: string, argv: readonly string[], env: NodeJS.ProcessEnv | undefined, step: string, signal?: AbortSignal, timeoutMs = STEP_TIMEOUT_MS,
  onLine?: (line: string) => void,
): Promise<string> {
  const r = await runProcess(argv, { cwd, env, signal, timeoutMs, tool: step, onLine });
  if (r.cancelled) throw new Cancelled();
  if (r.timedOut) throw new BuildFailure(step, r.output, `${step}: no result after ${Math.round(timeoutMs / 1000)} s, killed: ${describeArgv(argv)}`);
  if (r.error) throw new BuildFailure(step, r.error);
  if (r.code !== 0) throw new BuildFailure(step, r.output);
  return r.output;
}

/** No single step of a kernel link takes this long; one that does is hung. */
export const STEP_TIMEOUT_MS = 30 * 60_000;

/** A short synchronous query (`clang --version`, `llvm-nm`): for the few places that need an
 * answer before anything else can happen. Bounded, and a failure to start is a KtldError. */
export function querySync(argv: readonly string[], cwd?: string, env?: NodeJS.ProcessEnv, timeoutMs = 120_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(argv[0], argv.slice(1), { cwd, env, encoding: "utf8", maxBuffer: 256 << 20, timeout: timeoutMs, killSignal: "SIGKILL" });
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === "ETIMEDOUT") throw new KtldError(`no answer after ${Math.round(timeoutMs / 1000)} s from: ${describeArgv(argv)}`);
  if (r.error) throw new KtldError(`${argv[0]}: ${r.error.message}`);
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}
