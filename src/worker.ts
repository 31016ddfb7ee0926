// A pool worker: runs one compiler process (through the process runner, so in a process
// group of its own) and hashes what it wrote. Hashing here keeps the main thread free
// while natives are being made.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { MessagePort, receiveMessageOnPort } from "node:worker_threads";
import { isWholeElf64 } from "./base/hash";
import { workerData } from "piscina";
import { describeArgv, runProcess, setChildLedger } from "./base/process";

export interface JobTask {
  readonly argv: readonly string[];
  readonly cwd: string;
  /** The file the command writes, to check and hash when it exits 0. */
  readonly output?: string;
  readonly env?: Readonly<Record<string, string>>;
  /** The output must be a whole ELF64 object (BE natives). */
  readonly checkElf?: boolean;
  /** A compile that runs longer is killed (a hung compiler fails its job, not the build dir). */
  readonly timeoutMs?: number;
  /** "cancel" arrives here when the build is cancelled (see pool.ts). */
  readonly port: MessagePort;
}

export interface JobResult {
  readonly code: number | null;
  readonly signal: string | null;
  /** stdout and stderr together, as the compiler printed them. */
  readonly diagnostics: string;
  readonly ms: number;
  readonly outputHash?: string;
  readonly outputSize?: number;
  readonly error?: string;
  readonly cancelled?: boolean;
}

setChildLedger((workerData as { ledger?: string } | undefined)?.ledger);

/** No single compile of a kernel object takes this long. */
export const JOB_TIMEOUT_MS = 20 * 60_000;

export default async function runJob(task: JobTask): Promise<JobResult> {
  const abort = new AbortController();
  // Cancelled while it waited in the queue: start nothing.
  if (receiveMessageOnPort(task.port)) abort.abort();
  task.port.on("message", () => abort.abort());
  try {
    const timeoutMs = task.timeoutMs ?? JOB_TIMEOUT_MS;
    const r = await runProcess(task.argv, { cwd: task.cwd, env: task.env ? { ...process.env, ...task.env } : process.env, signal: abort.signal, timeoutMs });
    const base = { code: r.code, signal: r.signal, diagnostics: r.output, ms: r.ms };
    if (r.cancelled) return { ...base, cancelled: true };
    if (r.timedOut) return { ...base, error: `no result after ${Math.round(timeoutMs / 1000)} s, killed: ${describeArgv(task.argv)}` };
    if (r.error) return { ...base, error: r.error };
    if (r.code !== 0 || !task.output) return base;
    try {
      const bytes = fs.readFileSync(task.output);
      if (task.checkElf && !isWholeElf64(bytes)) return { ...base, error: `${task.output}: not a whole ELF object (${bytes.length} bytes)` };
      return { ...base, outputHash: createHash("sha256").update(bytes).digest("hex"), outputSize: bytes.length };
    } catch (e) {
      return { ...base, error: `${task.output}: ${(e as Error).message}` };
    }
  } finally {
    task.port.close();
  }
}
