// The job pool (piscina): one worker thread per concurrent compile.
import * as path from "node:path";
import Piscina from "piscina";
import type { JobResult, JobTask } from "./worker";

export class JobPool {
  private readonly piscina: Piscina;

  constructor(readonly jobs: number) {
    this.piscina = new Piscina({
      filename: path.join(__dirname, "worker.js"),
      minThreads: 1,
      maxThreads: jobs,
      // Each task is one child process: queueing more than one per thread only adds latency.
      concurrentTasksPerWorker: 1,
      idleTimeout: 30_000,
    });
  }

  run(task: JobTask): Promise<JobResult> {
    return this.piscina.run(task) as Promise<JobResult>;
  }

  async close(): Promise<void> {
    await this.piscina.destroy();
  }
}
