// The main job on the default fixture (the developer fixture: O=out, modules, kallsyms,
// DWARF5 + BTF): a private copy of the built kernel tree, `ktld build` on it, then the daemon
// keeps vmlinux fresh after a one-line edit in kernel/fork.c, as a developer would use it.
// The long steps (the fixture's make, the first build) show as progress; their full output
// goes to a log file named at the end.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { copyFixture, DEV_BUILD_DIR, fixtureEnv } from "./fixture";
import { runWithProgress } from "./progress";

const KTLD = path.resolve(__dirname, "../client/ktld.js");
const env = fixtureEnv("dev");

function sh(cmd: string, args: string[], cwd?: string): void {
  process.stdout.write(`\n$ ${[cmd, ...args].join(" ")}\n`);
  const r = spawnSync(cmd, args, { cwd, stdio: "inherit", env, timeout: 60 * 60_000 });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

async function main(): Promise<void> {
  const dir = process.env.KTLD_DEMO_DIR ?? path.join(os.homedir(), "ktld-demo");
  const src = path.join(dir, "linux");
  const out = path.join(src, DEV_BUILD_DIR);
  fs.mkdirSync(dir, { recursive: true });
  const logFile = path.join(dir, "demo.log");
  fs.writeFileSync(logFile, "");
  if (!fs.existsSync(path.join(out, "vmlinux"))) {
    // Built once per machine (make, about 10 minutes on 2 cores), then copied.
    const fixture = await runWithProgress("kernel fixture (make, once per machine)", process.execPath, [path.resolve(__dirname, "fixture.js"), "--dev"], { env, logFile, timeoutMs: 120 * 60_000 });
    if (fixture !== 0) process.exit(fixture);
    fs.rmSync(src, { recursive: true, force: true });
    process.stdout.write(`copying the developer kernel fixture to ${src} (build dir ${out})\n`);
    copyFixture(src, "dev");
  }
  const first = await runWithProgress("ktld build (the first one compiles every BE job)", process.execPath, [KTLD, "build", "--build-dir", out], { env, logFile, timeoutMs: 60 * 60_000, echoFrom: /^phase\s+run\s/ });
  if (first !== 0) process.exit(first);
  sh(process.execPath, [KTLD, "start", "--build-dir", out]);
  const forkC = path.join(src, "kernel/fork.c");
  const text = fs.readFileSync(forkC, "utf8");
  const anchor = "void free_task(struct task_struct *tsk)\n{\n";
  const line = '\tpr_info("ktld demo edit\\n");\n';
  fs.writeFileSync(forkC, text.includes(anchor + line) ? text.replace(anchor + line, anchor) : text.replace(anchor, anchor + line));
  process.stdout.write(`\nedited kernel/fork.c (free_task): the daemon rebuilds vmlinux\n`);
  sh(process.execPath, [KTLD, "build", "--wait", "--build-dir", out]);
  sh(process.execPath, [KTLD, "status", "--build-dir", out]);
  sh(process.execPath, [KTLD, "stop", "--build-dir", out]);
  process.stdout.write(`\nthe full output of the long steps: ${logFile}\n`);
}

void main();
