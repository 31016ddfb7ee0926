// The main job on the default fixture: a private copy of the built kernel tree, `ktld build`
// on it, then a one-line edit in kernel/fork.c rebuilt the way a developer would.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { copyFixture, fixtureEnv, MAKE_ARGS } from "./fixture";

const KTLD = path.resolve(__dirname, "../client/ktld.js");

function sh(cmd: string, args: string[], cwd?: string): void {
  process.stdout.write(`\n$ ${[cmd, ...args].join(" ")}\n`);
  const r = spawnSync(cmd, args, { cwd, stdio: "inherit", env: fixtureEnv() });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const dir = process.env.KTLD_DEMO_DIR ?? path.join(os.homedir(), "ktld-demo");
const tree = path.join(dir, "linux");
if (!fs.existsSync(path.join(tree, "vmlinux"))) {
  fs.rmSync(tree, { recursive: true, force: true });
  process.stdout.write(`copying the kernel fixture to ${tree}\n`);
  copyFixture(tree);
}
sh(process.execPath, [KTLD, "build", "--build-dir", tree]);
const forkC = path.join(tree, "kernel/fork.c");
const text = fs.readFileSync(forkC, "utf8");
const anchor = "void free_task(struct task_struct *tsk)\n{\n";
const line = '\tpr_info("ktld demo edit\\n");\n';
fs.writeFileSync(forkC, text.includes(anchor + line) ? text.replace(anchor + line, anchor) : text.replace(anchor, anchor + line));
process.stdout.write(`\nedited kernel/fork.c (free_task)\n`);
sh("make", [...MAKE_ARGS, "kernel/fork.o"], tree);
sh(process.execPath, [KTLD, "build", "--build-dir", tree]);
