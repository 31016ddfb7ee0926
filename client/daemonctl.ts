// Finding, starting and stopping the daemon of a build dir.
import { spawn } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { InstanceLock } from "../src/lock";
import { DaemonInfo, daemonInfoPath, socketPathOf } from "../src/protocol";
import { KtldError } from "../src/base/errors";
import { IpcClient, NoDaemon } from "../src/ipc";

export function readDaemonInfo(stateDir: string): DaemonInfo | undefined {
  try {
    return JSON.parse(fs.readFileSync(daemonInfoPath(stateDir), "utf8")) as DaemonInfo;
  } catch {
    return undefined;
  }
}

/** A connection to the running daemon of `stateDir`, or undefined if none runs. */
export async function connectDaemon(stateDir: string): Promise<IpcClient | undefined> {
  if (!(await InstanceLock.held(stateDir))) return undefined;
  try {
    return await IpcClient.connect(socketPathOf(stateDir), 15_000);
  } catch (e) {
    if (e instanceof NoDaemon) {
      throw new KtldError(`a ktld process holds ${stateDir} but does not answer (a one-shot build, or a daemon starting up); see ${path.join(stateDir, "daemon.log")}`);
    }
    throw new KtldError((e as Error).message);
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Whether a process runs (a zombie nobody reaped yet does not). */
export function alive(pid: number): boolean {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

export interface StartOptions {
  readonly buildDir: string;
  readonly stateDir: string;
  readonly args: readonly string[];
  readonly timeoutMs?: number;
}

/** Starts the daemon detached and returns once it answers. */
export async function startDaemon(opts: StartOptions): Promise<{ pid: number; started: boolean; log: string }> {
  const logFile = path.join(opts.stateDir, "daemon.log");
  fs.mkdirSync(opts.stateDir, { recursive: true, mode: 0o700 });
  const existing = await tryConnect(opts.stateDir);
  if (existing === "outdated") {
    const info = readDaemonInfo(opts.stateDir);
    if (info && alive(info.pid)) process.kill(info.pid, "SIGTERM");
    for (let i = 0; i < 100 && (await InstanceLock.held(opts.stateDir)); i++) await sleep(100);
  } else if (existing) {
    const pid = existing.hello?.pid ?? 0;
    existing.close();
    return { pid, started: false, log: logFile };
  }
  // The lock held by a process that does not answer yet: a daemon starting up (or a
  // one-shot build). Wait for it rather than spawning a second one that would be refused.
  const other = existing === undefined && (await InstanceLock.held(opts.stateDir));
  let child: ReturnType<typeof spawn> | undefined;
  if (!other) {
    const fd = fs.openSync(logFile, "a", 0o600);
    const daemonMain = path.resolve(__dirname, "../daemon/main.js");
    // --expose-gc: the daemon collects once after each build while it idles (daemon.ts),
    // so that what it holds between builds is its live data, not the last build's garbage.
    // --max-semi-space-size=2 (MB): V8's young generation (16 MB semi-spaces by default)
    // stays resident between builds; with 2 MB the daemon on the x86_64 defconfig tree held
    // 165-170 MiB instead of 200-212 MiB, and answered as soon (docs/benchmarks.md).
    child = spawn(process.execPath, ["--expose-gc", "--max-semi-space-size=2", daemonMain, "--build-dir", opts.buildDir, "--state-dir", opts.stateDir, ...opts.args], {
      detached: true, stdio: ["ignore", fd, fd], cwd: "/",
    });
    child.unref();
    fs.closeSync(fd);
  }
  const deadline = Date.now() + (opts.timeoutMs ?? 120_000);
  while (Date.now() < deadline) {
    const c = await tryConnect(opts.stateDir);
    if (c && c !== "outdated") {
      const pid = c.hello?.pid ?? child?.pid ?? 0;
      c.close();
      return { pid, started: child !== undefined && pid === child.pid, log: logFile };
    }
    if (child && (child.exitCode !== null || !alive(child.pid!))) {
      const tail = fs.readFileSync(logFile, "utf8").trim().split("\n").pop() ?? "";
      throw new KtldError(`the daemon did not start: ${tail.replace(/^ktld daemon: /, "")} (log: ${logFile})`);
    }
    await sleep(100);
  }
  throw new KtldError(`the daemon did not answer within ${Math.round((opts.timeoutMs ?? 120_000) / 1000)} s; see ${logFile}`);
}

async function tryConnect(stateDir: string): Promise<IpcClient | "outdated" | undefined> {
  if (!(await InstanceLock.held(stateDir))) return undefined;
  try {
    return await IpcClient.connect(socketPathOf(stateDir), 2000);
  } catch (e) {
    if (e instanceof NoDaemon) return undefined;
    return "outdated";
  }
}

/** Asks the daemon to stop and waits until its lock is released. */
export async function stopDaemon(stateDir: string): Promise<number | undefined> {
  const c = await connectDaemon(stateDir);
  if (!c) return undefined;
  const pid = c.hello?.pid;
  await c.request("stop");
  c.close();
  for (let i = 0; i < 300 && (await InstanceLock.held(stateDir)); i++) await sleep(100);
  // The lock goes a moment before the process: "stopped" means gone.
  for (let i = 0; i < 100 && pid !== undefined && alive(pid); i++) await sleep(50);
  return pid;
}
