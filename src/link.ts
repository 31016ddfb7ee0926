// The native link: vmlinux.o from the natives in kbuild's link order with kbuild's own
// flags, objtool as kbuild runs it, then kbuild's remaining vmlinux steps.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { nativePath } from "./backend";
import { BuildFailure } from "./errors";
import { CmdFile, cmdFilePath, parseCmdFile } from "./kbuild/cmdfile";
import { KbuildTree, LinkObject } from "./kbuild/tree";
import { inputArgs } from "./thinlink";

/** The link inputs: each bitcode module the thin-link loaded becomes its native, other
 * objects stay as they are, and lazy bitcode members the thin-link did not load are left
 * out, as the linker would have. */
export function nativeInputs(objects: readonly LinkObject[], loaded: ReadonlySet<string>): LinkObject[] {
  const out: LinkObject[] = [];
  for (const o of objects) {
    if (!o.bitcode) out.push(o);
    else if (loaded.has(o.path)) out.push({ ...o, path: nativePath(o.path), bitcode: false });
  }
  return out;
}

/** kbuild's vmlinux.o ld argv with its archives replaced by the native inputs. */
export function vmlinuxOArgv(tree: KbuildTree, inputs: readonly LinkObject[]): string[] {
  const archives = new Set([...tree.wholeArchives, ...tree.libArchives]);
  const out: string[] = [];
  let placed = false;
  for (const a of tree.vmlinuxLink.ldArgv) {
    if (["--whole-archive", "--no-whole-archive", "--start-group", "--end-group", "--start-lib", "--end-lib", "-(", "-)"].includes(a)) continue;
    if (archives.has(a)) {
      if (!placed) out.push(...inputArgs(inputs));
      placed = true;
      continue;
    }
    out.push(a);
  }
  return out;
}

export interface StepRunner {
  (label: string, target: string, argv: readonly string[], opts?: { shell?: boolean; env?: Record<string, string> }): void;
}

function readRecorded(tree: KbuildTree, target: string): CmdFile | undefined {
  const file = path.join(tree.buildDir, cmdFilePath(target));
  if (!fs.existsSync(file)) return undefined;
  return parseCmdFile(fs.readFileSync(file, "utf8"), cmdFilePath(target));
}

export function runStep(cwd: string, argv: readonly string[], env: Record<string, string>, step: string): string {
  const r = spawnSync(argv[0], argv.slice(1), { cwd, env, encoding: "utf8", maxBuffer: 64 << 20 });
  const out = `${r.stdout ?? ""}${r.stderr ?? ""}`;
  if (r.error) throw new BuildFailure(step, `${argv[0]}: ${r.error.message}`);
  if (r.status !== 0) throw new BuildFailure(step, out);
  return out;
}

/** Runs a command kbuild recorded, from the build dir, as make would have (`sh -c`). */
function replay(tree: KbuildTree, target: string, env: Record<string, string>): string | undefined {
  const rec = readRecorded(tree, target);
  if (!rec) return undefined;
  return runStep(tree.buildDir, ["/bin/sh", "-c", rec.command], env, target);
}

/** Regenerates `.tmp_initcalls.lds` (the initcall order of an LTO link) from the current
 * objects; if its bytes did not change, its old mtime is put back. */
function refreshInitcalls(tree: KbuildTree, env: Record<string, string>): void {
  const file = path.join(tree.buildDir, ".tmp_initcalls.lds");
  const before = fs.existsSync(file) ? { bytes: fs.readFileSync(file), st: fs.statSync(file) } : undefined;
  if (replay(tree, ".tmp_initcalls.lds", env) === undefined) return;
  if (before && fs.readFileSync(file).equals(before.bytes)) fs.utimesSync(file, before.st.atime, before.st.mtime);
}

export interface LinkLog {
  (label: string, target: string): void;
}

/** Links vmlinux.o from `inputs` and makes vmlinux with kbuild's own steps. */
export function linkVmlinux(tree: KbuildTree, inputs: readonly LinkObject[], env: Record<string, string>, log: LinkLog): void {
  const dir = tree.buildDir;
  log("GEN", ".tmp_initcalls.lds");
  refreshInitcalls(tree, env);
  log("LD", "vmlinux.o");
  runStep(dir, vmlinuxOArgv(tree, inputs), env, "LD vmlinux.o");
  if (tree.vmlinuxLink.after) {
    log("OBJTOOL", "vmlinux.o");
    runStep(dir, ["/bin/sh", "-c", tree.vmlinuxLink.after], env, "objtool vmlinux.o");
  }
  for (const t of ["modules.builtin.modinfo", "modules.builtin"]) {
    if (fs.existsSync(path.join(dir, cmdFilePath(t)))) {
      log("GEN", t);
      replay(tree, t, env);
    }
  }
  const srctree = env.srctree ?? tree.srcTree;
  const mk = (makefile: string) => ["make", "-s", "-f", path.resolve(dir, srctree, "scripts", makefile)];
  log("MODPOST", "vmlinux.symvers");
  runStep(dir, mk("Makefile.modpost"), env, "modpost");
  log("LD", "vmlinux");
  runStep(dir, mk("Makefile.vmlinux"), env, "LD vmlinux");
}
