// The one place that knows the format of kbuild's `.<target>.cmd` files.
//
//   savedcmd_kernel/fork.o := clang-19 -Wp,-MMD,kernel/.fork.o.d ... -c -o kernel/fork.o kernel/fork.c
//   source_kernel/fork.o := kernel/fork.c
//   deps_kernel/fork.o := \
//     include/linux/compiler-version.h \
//       $(wildcard include/config/CC_VERSION_TEXT) \
//   kernel/fork.o: $(deps_kernel/fork.o)
//   $(deps_kernel/fork.o):
//   saved_c_flags_kernel/fork.o := ...        (dist-mode trees, CONFIG_LTO_CLANG_THIN_DIST)
//
// Kernels before 6.1 write `cmd_<target> :=` instead of `savedcmd_<target> :=`.
import * as fs from "node:fs";
import * as path from "node:path";
import { KtldError } from "../base/errors";

export interface CmdFile {
  /** The target as kbuild names it, relative to the build dir (e.g. `kernel/fork.o`). */
  readonly target: string;
  /** The command that made the target, unescaped from make syntax: ready for `sh -c`. */
  readonly command: string;
  /** The command as the file holds it (make-escaped), as fixdep must be given it. */
  readonly rawCommand: string;
  readonly source?: string;
  /** Files the target depends on (fixdep's list, without its `$(wildcard include/config/FOO)`
   * entries: such a file appears only with a .config change, which kbuild handles
   * (src/graph.ts); on the x86_64 defconfig tree their names took 17 MB of the daemon's heap). */
  readonly deps: readonly string[];
  /** `saved_c_flags_` of dist-mode trees (already unescaped), if present. */
  readonly savedCFlags?: string;
  /** The `saved_c_flags_` line as the file holds it, to write back after fixdep. */
  readonly savedCFlagsLine?: string;
  /** fixdep ends its part with `$(deps_<target>):`; a file cut short lacks it. */
  readonly depsComplete: boolean;
}

/** The path of the .cmd file that records `target` (relative to the build dir). */
export function cmdFilePath(target: string): string {
  return path.join(path.dirname(target), `.${path.basename(target)}.cmd`);
}

/** kbuild writes `$` as `$$` and `#` as `\#` so that make can read the file back. */
export function unescapeMake(s: string): string {
  return s.replace(/\$\$/g, "$").replace(/\\#/g, "#");
}

/** Joins backslash-continued lines, as make reads them. */
function logicalLines(text: string): string[] {
  const out: string[] = [];
  let cur = "";
  for (const raw of text.split("\n")) {
    if (raw.endsWith("\\")) {
      cur += raw.slice(0, -1) + " ";
    } else {
      out.push(cur + raw);
      cur = "";
    }
  }
  if (cur) out.push(cur);
  return out;
}

export class CmdFileError extends KtldError {}

/** `kernel/.fork.o.cmd` → `kernel/fork.o`. */
export function targetOfCmdFile(file: string): string {
  return path.join(path.dirname(file), path.basename(file).replace(/^\./, "").replace(/\.cmd$/, ""));
}

/** A flat copy of a string: a substring may be a slice that keeps the whole `.cmd` text it
 * came from alive (tens of KB per object, for as long as the daemon keeps the record). */
function own(s: string): string {
  return Buffer.from(s, "utf8").toString("utf8");
}

/** One copy of each file name: the same few thousand headers and config files are named by
 * hundreds of thousands of dep entries across a tree (most of a daemon's heap, before). */
const names = new Map<string, string>();
export function intern(s: string): string {
  const had = names.get(s);
  if (had !== undefined) return had;
  const copy = own(s);
  names.set(copy, copy);
  return copy;
}

export function parseCmdFile(text: string, file: string): CmdFile {
  let target: string | undefined;
  let command: string | undefined;
  let rawCommand = "";
  let savedCFlagsLine: string | undefined;
  let source: string | undefined;
  let savedCFlags: string | undefined;
  const deps: string[] = [];
  let depsComplete = false;
  for (const line of logicalLines(text)) {
    if (/^\$\(deps_\S+\):\s*$/.test(line)) depsComplete = true;
    const m = /^(savedcmd|cmd|source|deps|saved_c_flags)_(\S+?) := ?(.*)$/.exec(line);
    if (!m) continue;
    const [, kind, name, value] = m;
    if (kind === "savedcmd" || kind === "cmd") {
      target = intern(name);
      rawCommand = own(value.trim());
      command = unescapeMake(rawCommand);
    } else if (kind === "source") {
      source = intern(value.trim());
    } else if (kind === "saved_c_flags") {
      savedCFlags = own(unescapeMake(value.trim()));
      savedCFlagsLine = own(line);
    } else {
      const words = value.trim().split(/\s+/).filter(Boolean);
      for (let i = 0; i < words.length; i++) {
        const w = words[i];
        if (w === "$(wildcard" && i + 1 < words.length) {
          i++;
        } else if (!w.startsWith("$(wildcard")) {
          deps.push(intern(w));
        }
      }
    }
  }
  if (target === undefined || command === undefined) {
    throw new CmdFileError(
      `${file}: no savedcmd_ line (truncated or not a kbuild .cmd file); rebuild ${targetOfCmdFile(file)} with make to regenerate it`,
    );
  }
  if (text.length > 0 && !text.endsWith("\n")) {
    throw new CmdFileError(`${file}: truncated (no final newline); rebuild ${targetOfCmdFile(file)} with make to regenerate it`);
  }
  return { target, command, rawCommand, source, deps, savedCFlags, savedCFlagsLine, depsComplete };
}

export function readCmdFile(buildDir: string, target: string): CmdFile {
  const rel = cmdFilePath(target);
  const file = path.join(buildDir, rel);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    throw new CmdFileError(`${rel}: missing; rebuild ${target} with make to regenerate it`);
  }
  const cmd = parseCmdFile(text, rel);
  if (cmd.target !== target) {
    throw new CmdFileError(`${rel}: records ${cmd.target}, not ${target}; rebuild ${target} with make`);
  }
  return cmd;
}
