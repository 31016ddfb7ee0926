// A pool worker: runs one compiler process and hashes what it wrote. Hashing here keeps
// the main thread free while natives are being made.
import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import { isWholeElf64 } from "./hash";

export interface JobTask {
  readonly argv: readonly string[];
  readonly cwd: string;
  /** The file the command writes, to check and hash when it exits 0. */
  readonly output?: string;
  readonly env?: Readonly<Record<string, string>>;
  /** The output must be a whole ELF64 object (BE natives). */
  readonly checkElf?: boolean;
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
}

export default function runJob(task: JobTask): Promise<JobResult> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const [cmd, ...args] = task.argv;
    const child = spawn(cmd, args, {
      cwd: task.cwd,
      env: task.env ? { ...process.env, ...task.env } : process.env,
      stdio: ["ignore", "pipe", "pipe"],
      // Its own process group, so that a cancelled build can kill it with what it spawned.
      detached: true,
    });
    const chunks: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => chunks.push(d));
    child.stderr.on("data", (d: Buffer) => chunks.push(d));
    child.on("error", (e) => {
      resolve({ code: null, signal: null, diagnostics: "", ms: performance.now() - t0, error: `${cmd}: ${e.message}` });
    });
    child.on("close", (code, signal) => {
      const diagnostics = Buffer.concat(chunks).toString("utf8");
      const ms = performance.now() - t0;
      if (code !== 0 || !task.output) {
        resolve({ code, signal, diagnostics, ms });
        return;
      }
      try {
        const bytes = fs.readFileSync(task.output);
        if (task.checkElf && !isWholeElf64(bytes)) {
          resolve({ code, signal, diagnostics, ms, error: `${task.output}: not a whole ELF object (${bytes.length} bytes)` });
          return;
        }
        resolve({ code, signal, diagnostics, ms, outputHash: createHash("sha256").update(bytes).digest("hex"), outputSize: bytes.length });
      } catch (e) {
        resolve({ code, signal, diagnostics, ms, error: `${task.output}: ${(e as Error).message}` });
      }
    });
  });
}
