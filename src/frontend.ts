// Frontend: replaying kbuild's compile of one object exactly as its rule does —
// the saved command through `sh -c` from the build dir, then `scripts/basic/fixdep`
// regenerating the `.cmd` file, then (dist-mode trees) the `saved_c_flags_` line.
import * as fs from "node:fs";
import * as path from "node:path";
import { CmdFile, cmdFilePath } from "./kbuild/cmdfile";
import { tokenize } from "./base/shell";
import { TEMP_SUFFIX } from "./kbuild/names";
import { DistccConfig, distccEnv, routeFrontend, stripWrapper } from "./distcc";

/** Where the compile writes its make-style dependency file (`-Wp,-MMD,kernel/.fork.o.d`). */
export function depfileOf(command: string): string | undefined {
  for (const t of tokenize(command)) {
    const m = /^-Wp,-MM?D,(.+)$/.exec(t.value);
    if (m) return m[1];
  }
  return undefined;
}

export interface FrontendJob {
  readonly object: string;
  /** Where the compile writes, if not the object (a single-object kernel module's bitcode). */
  readonly output?: string;
  readonly argv: readonly string[];
  readonly depfile?: string;
  readonly reason: string;
  /** Through distcc: its environment, and the command to run here should distcc itself fail. */
  readonly remote?: { readonly env: Readonly<Record<string, string>>; readonly localArgv: readonly string[] };
  /** Where it runs and why (src/distcc.ts). */
  readonly route: string;
}

export function frontendJob(cmd: CmdFile, reason: string, compile?: { command: string; output: string }, distcc?: DistccConfig): FrontendJob {
  const recorded = compile?.command ?? cmd.command;
  const route = routeFrontend(recorded, cmd.source, distcc);
  const job = { object: cmd.target, output: compile?.output, argv: ["/bin/sh", "-c", route.command], depfile: depfileOf(recorded), reason, route: route.why };
  return route.remote && distcc ? { ...job, remote: { env: distccEnv(distcc), localArgv: ["/bin/sh", "-c", stripWrapper(recorded)] } } : job;
}

/** The fixdep run that turns the depfile into the new `.cmd` file (kbuild's cmd_and_fixdep). */
export function fixdepArgv(buildDir: string, job: FrontendJob, cmd: CmdFile): string[] {
  return [path.join(buildDir, "scripts/basic/fixdep"), job.depfile!, job.object, cmd.rawCommand];
}

/** Writes fixdep's output (plus the saved_c_flags_ line) as the object's `.cmd` file,
 * atomically, and removes the depfile as kbuild does. */
export function writeCmdFile(buildDir: string, job: FrontendJob, cmd: CmdFile, fixdepOut: string): void {
  const file = path.join(buildDir, cmdFilePath(job.object));
  const text = cmd.savedCFlagsLine ? `${fixdepOut}\n${cmd.savedCFlagsLine}\n` : fixdepOut;
  const tmp = `${file}${TEMP_SUFFIX}`;
  fs.writeFileSync(tmp, text);
  fs.renameSync(tmp, file);
  if (job.depfile) fs.rmSync(path.join(buildDir, job.depfile), { force: true });
}
