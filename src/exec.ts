// Running a command without blocking the event loop (the daemon keeps answering clients
// while a link runs).
import { spawn } from "node:child_process";
import { BuildFailure } from "./errors";

export interface CommandResult {
  readonly code: number | null;
  readonly output: string;
  readonly error?: string;
}

export function runCommand(argv: readonly string[], cwd: string, env?: NodeJS.ProcessEnv): Promise<CommandResult> {
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { cwd, env: env ?? process.env, stdio: ["ignore", "pipe", "pipe"] });
    const chunks: Buffer[] = [];
    child.stdout.on("data", (d: Buffer) => chunks.push(d));
    child.stderr.on("data", (d: Buffer) => chunks.push(d));
    child.on("error", (e) => resolve({ code: null, output: "", error: `${argv[0]}: ${e.message}` }));
    child.on("close", (code) => resolve({ code, output: Buffer.concat(chunks).toString("utf8") }));
  });
}

/** Runs a step of the build; a failure becomes a BuildFailure with its output. */
export async function runStep(cwd: string, argv: readonly string[], env: NodeJS.ProcessEnv, step: string): Promise<string> {
  const r = await runCommand(argv, cwd, env);
  if (r.error) throw new BuildFailure(step, r.error);
  if (r.code !== 0) throw new BuildFailure(step, r.output);
  return r.output;
}
