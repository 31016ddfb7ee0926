// Trees built in the seed's distributed ThinLTO mode (CONFIG_LTO_CLANG_THIN_DIST): kbuild
// itself runs the four stages there, with its own file names and its own records:
//
//   KBUILD_VMLINUX_OBJS -> built-in-fixup.a -> builtin.order -> vmlinux.thinlto-index
//     -> <obj>.o.thinlto.bc -> <obj>.thinlto-native.o -> vmlinux.a -> vmlinux.o -> vmlinux
//
// ktld does the same work with the same commands (so the bytes are the same), only less
// of it. What this file adds is what keeps make agreeing: the archives kbuild makes between
// the FE and the thin-link, and the mtimes make compares, moved forward for what ktld
// checked by content to be current. After a ktld build, `make vmlinux` finds nothing of the
// LTO pipeline to redo.
import * as fs from "node:fs";
import * as path from "node:path";
import { runStep } from "../base/process";
import { argvOf, splitCommands } from "../base/shell";
import { refreshThinArchive, thinArchiveMembers } from "./archive";
import { cmdFilePath, parseCmdFile } from "./cmdfile";
import type { KbuildTree } from "./types";
import { TEMP_SUFFIX } from "./names";

export function mtimeOf(file: string): number | undefined {
  return fs.statSync(file, { throwIfNoEntry: false })?.mtimeMs;
}

function recordedCommand(buildDir: string, target: string): string | undefined {
  const file = path.join(buildDir, cmdFilePath(target));
  if (!fs.existsSync(file)) return undefined;
  return parseCmdFile(fs.readFileSync(file, "utf8"), cmdFilePath(target)).command;
}

/** The archives kbuild makes from the objects, deepest first: every `built-in.a` and
 * `lib.a` in the directories of vmlinux's objects and above them, that kbuild recorded. */
export function archiveChain(tree: KbuildTree): string[] {
  const dirs = new Set<string>();
  for (const o of tree.objects) {
    for (let d = path.dirname(o.path); ; d = path.dirname(d)) {
      dirs.add(d);
      if (d === "." || d === "/") break;
    }
  }
  const out: string[] = [];
  for (const d of dirs) {
    for (const name of ["built-in.a", "lib.a"]) {
      const a = d === "." ? name : path.join(d, name);
      if (fs.existsSync(path.join(tree.buildDir, cmdFilePath(a)))) out.push(a);
    }
  }
  const depth = (p: string) => (p.includes("/") ? p.split("/").length : 0);
  return out.sort((a, b) => depth(b) - depth(a) || a.localeCompare(b));
}

/** Re-archives what an FE replay made stale, as make would (a member newer than its
 * archive), by running kbuild's recorded commands; then the `tail` targets of the layout
 * (`[target, prerequisites]`: vmlinux.a, or built-in-fixup.a and builtin.order). Returns
 * the targets it ran. */
export async function refreshArchives(tree: KbuildTree, env: Record<string, string>, tail: readonly (readonly [string, readonly string[]])[]): Promise<string[]> {
  const dir = tree.buildDir;
  const ran: string[] = [];
  const replayIfStale = async (target: string, prereqs: readonly string[]) => {
    const t = mtimeOf(path.join(dir, target));
    const newest = Math.max(...prereqs.map((p) => mtimeOf(path.join(dir, p)) ?? Infinity));
    if (t !== undefined && newest <= t) return;
    const cmd = recordedCommand(dir, target);
    if (cmd === undefined) return;
    // A thin archive whose members only changed size: the bytes kbuild's ar would write,
    // in a few milliseconds instead of an ar run (llvm-ar reads every member of vmlinux.a).
    if (/\bcDPrST\b/.test(cmd) && refreshThinArchive(dir, target)) {
      ran.push(target);
      return;
    }
    // At the lowest priority: it runs beside the thin-link and the BE compiles, which are on
    // the way to a fresh vmlinux, and takes only the CPU they leave (on 2 cores, it slowed
    // them by as much as it took).
    // Into a file of its own, renamed over the target when whole: kbuild's command starts with
    // `rm -f <target>`, and a daemon killed in the middle (crash, kill -9) would leave a tree
    // without the archive that make, and ktld's import, need.
    const { command, tmp } = intoTemp(cmd, target);
    await runStep(dir, ["nice", "-n", "19", "/bin/sh", "-c", command], env, `AR ${target}`);
    if (tmp) fs.renameSync(path.join(dir, tmp), path.join(dir, target));
    ran.push(target);
  };
  for (const a of archiveChain(tree)) await replayIfStale(a, thinArchiveMembers(dir, a));
  for (const [target, prereqs] of tail) await replayIfStale(target, prereqs);
  return ran;
}

/** A recorded archive command with its target (every mention of it as a word) replaced by a
 * temp file beside it: thin-archive members are named relative to the archive's dir, so the
 * same dir keeps them right. No mention: the command as it is. */
export function intoTemp(command: string, target: string): { command: string; tmp?: string } {
  const tmp = `${target}${TEMP_SUFFIX}`;
  const re = new RegExp(`(^|[\\s;])${target.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}(?=$|[\\s;)])`, "g");
  const out = command.replace(re, `$1${tmp}`);
  return out === command ? { command } : { command: out, tmp };
}

/** `vmlinux.thinlto-index` as kbuild's thin-link writes it (the bitcode modules,
 * one per line, as the linker was given them), rewritten only if its bytes change. */
export function publishIndexList(buildDir: string, modules: readonly string[]): void {
  const file = path.join(buildDir, "vmlinux.thinlto-index");
  const text = modules.map((m) => `${m}\n`).join("");
  const old = fs.existsSync(file) ? fs.readFileSync(file, "utf8") : undefined;
  if (old !== text) fs.writeFileSync(file, text);
}

/** `vmlinux.a` as kbuild's `cmd_ar_vmlinux.a` makes it: a thin archive of the link inputs
 * (natives in place of bitcode), in builtin.order's order. */
export function vmlinuxAArgv(ar: string, inputs: readonly { path: string }[]): string[] {
  return [ar, "cDPrS", "--thin", "vmlinux.a", ...inputs.map((o) => o.path)];
}

/** `.<native>.cmd` as Makefile.thinlto records it, for a native make has no record of
 * (else make would compile it again for want of one). */
export function writeNativeCmdFile(buildDir: string, cc: string, savedCFlags: string, object: string, native: string, index: string): void {
  const file = path.join(buildDir, cmdFilePath(native));
  if (fs.existsSync(file)) return;
  const cmd = `${cc} ${savedCFlags} -x ir -fno-lto -Wno-unused-command-line-argument -fthinlto-index=${index} -c -o ${native} ${object}`;
  fs.writeFileSync(file, `savedcmd_${native} := ${cmd.replace(/\$/g, "$$$$").replace(/#/g, "\\#")}\n`);
}

/** For each `[target, prereqs]`, in order: if the target is older than a prerequisite,
 * give it the current time. Only for targets ktld has checked by content to be what make
 * would make now; make then finds them up to date. Returns the targets touched. */
export function settleMtimes(buildDir: string, chain: readonly (readonly [string, readonly string[]])[]): string[] {
  const touched: string[] = [];
  const now = new Date();
  for (const [target, prereqs] of chain) {
    const t = mtimeOf(path.join(buildDir, target));
    if (t === undefined) continue;
    if (prereqs.some((p) => (mtimeOf(path.join(buildDir, p)) ?? 0) > t)) {
      fs.utimesSync(path.join(buildDir, target), now, now);
      touched.push(target);
    }
  }
  return touched;
}

/** The ar binary kbuild used for built-in-fixup.a (`llvm-ar-19`). */
export function archiverOf(buildDir: string): string {
  const cmd = recordedCommand(buildDir, "built-in-fixup.a") ?? "";
  for (const c of splitCommands(cmd)) {
    const argv = argvOf(c);
    if (argv.includes("built-in-fixup.a") && argv[0] !== "rm") return argv[0];
  }
  return "llvm-ar";
}
