// The job pool (piscina): one worker thread per concurrent compile. Each job runs one
// child through the process runner inside its worker, which hashes what it wrote.
//
// Cancelling: piscina's own abort ends a worker thread but not the compiler it spawned, and
// a job still queued would start later. So every job gets a MessagePort: on abort the main
// thread posts "cancel" to it; a worker that has not started the job yet sees the message
// before it spawns anything, one that has kills its child's process group itself.
import { setMaxListeners } from "node:events";
import * as path from "node:path";
import { MessageChannel } from "node:worker_threads";
import Piscina from "piscina";
import { toolRun } from "./base/profile";
import type { JobResult, JobTask } from "./worker";

export class JobPool {
  private readonly piscina: Piscina;

  /** `ledger`: where the workers record the compilers they run (StateDir.childLedger). */
  constructor(readonly jobs: number, ledger?: string) {
    this.piscina = new Piscina({
      filename: path.join(__dirname, "worker.js"),
      workerData: { ledger },
      minThreads: jobs,
      maxThreads: jobs,
      // Each task is one child process: queueing more than one per thread only adds latency.
      concurrentTasksPerWorker: 1,
      idleTimeout: 30_000,
    });
  }

  /** Runs one job; `signal` cancels it (queued: it never starts; running: its process
   * group is killed). A cancelled job resolves with `cancelled`. */
  async run(task: Omit<JobTask, "port">, signal?: AbortSignal, tool = "compile"): Promise<JobResult> {
    if (signal?.aborted) return { code: null, signal: null, diagnostics: "", ms: 0, cancelled: true };
    // Every job of a build listens on its signal while queued: a thousand BE jobs are not a
    // leak (node warned so in the daemon's log past ten).
    if (signal) setMaxListeners(0, signal);
    const { port1, port2 } = new MessageChannel();
    const cancel = () => port1.postMessage("cancel");
    signal?.addEventListener("abort", cancel, { once: true });
    const ended = toolRun(tool);
    try {
      return (await this.piscina.run({ ...task, port: port2 }, { transferList: [port2] })) as JobResult;
    } finally {
      ended();
      signal?.removeEventListener("abort", cancel);
      port1.close();
    }
  }

  async close(): Promise<void> {
    await this.piscina.destroy();
  }
}
