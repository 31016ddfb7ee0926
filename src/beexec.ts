// The reference BE executor shipped with ktld: `node dist/src/beexec.js BATCH.json` (ktld's
// `--be-executor`, or any DTLTO-style batch). Each job runs in an empty directory holding
// only the files the batch lists for it, at their relative paths; its outputs are copied back
// beside the batch's working dir. A job whose input set is incomplete fails here, as it would
// on a remote machine: that is what it is for. Exit 0 when every job wrote its outputs.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { isWholeElf64 } from "./base/hash";
import { runProcess } from "./base/process";
import type { DtltoBatch, DtltoJob } from "./executor";
import { upLevels } from "./executor";

const JOB_TIMEOUT_MS = 20 * 60_000;

async function runJob(batch: DtltoBatch, job: DtltoJob, home: string): Promise<string | undefined> {
  const inputs = [...batch.common.inputs, ...job.inputs];
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-beexec-"));
  try {
    // Deep enough that `../` paths stay inside the root.
    const cwd = path.join(root, ...Array<string>(upLevels([...inputs, ...job.outputs])).fill("d"));
    fs.mkdirSync(cwd, { recursive: true });
    for (const rel of inputs) {
      const dest = path.resolve(cwd, rel);
      fs.mkdirSync(path.dirname(dest), { recursive: true });
      fs.copyFileSync(path.resolve(home, rel), dest);
    }
    for (const out of job.outputs) fs.mkdirSync(path.dirname(path.resolve(cwd, out)), { recursive: true });
    const r = await runProcess([...batch.common.args, ...job.args], { cwd, timeoutMs: JOB_TIMEOUT_MS });
    const said = (r.error ?? r.output).trim().split("\n").slice(-5).join(" | ");
    if (r.code !== 0) return `exit ${r.code ?? r.signal}: ${said}`;
    // clang 19 reports a ThinLTO backend error (an imported module it cannot load) and exits
    // 0 with an empty object: an output counts only as a whole ELF object.
    for (const out of job.outputs) {
      const from = path.resolve(cwd, out);
      if (!fs.existsSync(from)) return `wrote no ${out}: ${said}`;
      if (!isWholeElf64(fs.readFileSync(from))) return `${out} is not a whole ELF object (exit 0): ${said}`;
    }
    for (const out of job.outputs) fs.copyFileSync(path.resolve(cwd, out), path.resolve(home, out));
    return undefined;
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

async function main(argv: string[]): Promise<number> {
  const file = argv.find((a) => !a.startsWith("-"));
  const jobsArg = argv.find((a) => a.startsWith("-j"));
  if (!file) {
    process.stderr.write("usage: beexec [-jN] BATCH.json (DTLTO's JSON; run from the dir its paths are relative to)\n");
    return 2;
  }
  const batch = JSON.parse(fs.readFileSync(file, "utf8")) as DtltoBatch;
  const home = process.cwd();
  const width = Math.max(1, jobsArg ? Number(jobsArg.slice(2)) : os.cpus().length);
  const failed: string[] = [];
  let next = 0;
  await Promise.all(Array.from({ length: width }, async () => {
    while (next < batch.jobs.length) {
      const job = batch.jobs[next++];
      const why = await runJob(batch, job, home).catch((e: unknown) => (e as Error).message);
      if (why) failed.push(`${job.outputs.join(" ")}: ${why}`);
    }
  }));
  for (const f of failed) process.stderr.write(`beexec: ${f}\n`);
  process.stdout.write(`beexec: ${batch.jobs.length - failed.length} of ${batch.jobs.length} jobs done in empty dirs\n`);
  return failed.length ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`beexec: ${(e as Error).message}\n`);
  process.exit(2);
});
