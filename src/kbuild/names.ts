// The files kbuild and lld put beside an object, and how lld takes a list of objects. A leaf:
// the engine and the kbuild reader both name these files, and neither defines them.

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
