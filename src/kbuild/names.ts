// The files kbuild and lld put beside an object, and how lld takes a list of objects. A leaf:
// the engine and the kbuild reader both name these files, and neither defines them.
import * as fs from "node:fs";
import * as path from "node:path";

/** What ktld writes a file of the build dir into before renaming it over the file. */
export const TEMP_SUFFIX = ".ktld-tmp";

/** Removes the temp files a ktld that died left in the build dir: ktld writes them only
 * beside the objects it builds (natives, index files, `.cmd` files) and their directories'
 * archives (`built-in.a` up to the top, `vmlinux.a`), so the directories of `objects` and
 * their parents are all it reads. Returns what it removed, relative to the build dir.
 * Called with the build dir's lock held. */
export function sweepTempFiles(buildDir: string, objects: Iterable<string>): string[] {
  const dirs = new Set<string>(["."]);
  for (const o of objects) {
    for (let d = path.dirname(o); !dirs.has(d); d = path.dirname(d)) dirs.add(d);
  }
  const out: string[] = [];
  for (const d of dirs) {
    let names: string[];
    try {
      names = fs.readdirSync(path.join(buildDir, d));
    } catch {
      continue;
    }
    for (const n of names) {
      if (!n.endsWith(TEMP_SUFFIX)) continue;
      fs.rmSync(path.join(buildDir, d, n), { force: true });
      out.push(path.join(d, n));
    }
  }
  return out;
}

/** The native object the BE makes of a bitcode unit (kbuild's dist-mode name). */
export function nativePath(object: string): string {
  return object.replace(/\.o$/, "") + ".thinlto-native.o";
}

/** The per-module index the thin-link writes beside a unit. */
export function indexPath(object: string): string {
  return `${object}.thinlto.bc`;
}

/** The list of the modules a unit imports from, written by `--thinlto-emit-imports-files`. */
export function importsPath(object: string): string {
  return `${object}.imports`;
}

/** The `.ko` of a module object. */
export function koPath(object: string): string {
  return object.replace(/\.o$/, ".ko");
}

/** The objects as linker inputs: the whole ones directly, the lazy ones as a library. */
export function inputArgs(objects: readonly { path: string; lazy: boolean }[]): string[] {
  const whole = objects.filter((o) => !o.lazy).map((o) => o.path);
  const lazy = objects.filter((o) => o.lazy).map((o) => o.path);
  return lazy.length ? [...whole, "--start-lib", ...lazy, "--end-lib"] : whole;
}
