// The job pool (piscina): one worker thread per concurrent compile.
import * as fs from "node:fs";
import * as path from "node:path";
import Piscina from "piscina";
import type { JobResult, JobTask } from "./worker";

export class JobPool {
  private readonly piscina: Piscina;

  constructor(readonly jobs: number) {
    this.piscina = new Piscina({
      filename: path.join(__dirname, "worker.js"),
      minThreads: jobs,
      maxThreads: jobs,
      // Each task is one child process: queueing more than one per thread only adds latency.
      concurrentTasksPerWorker: 1,
      idleTimeout: 30_000,
    });
  }

  run(task: JobTask): Promise<JobResult> {
    return this.piscina.run(task) as Promise<JobResult>;
  }

  /** Kills every running job (each is its own process group) so a cancelled build stops
   * now. piscina's abort would end a worker thread but leave its compiler running. */
  killRunning(): number {
    let killed = 0;
    for (const pid of childPids(process.pid)) {
      try {
        process.kill(-pid, "SIGKILL");
        killed++;
      } catch {
        // already gone
      }
    }
    return killed;
  }

  async close(): Promise<void> {
    await this.piscina.destroy();
  }
}

/** Direct children of a process, from /proc. */
export function childPids(parent: number): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      if (ppid === parent) out.push(Number(d));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}
