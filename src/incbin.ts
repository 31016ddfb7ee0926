// `.incbin` in inline asm pulls a file's bytes into an object while its bitcode stays the
// same (kernel/configs.c with CONFIG_IKCONFIG, kheaders). Such files are inputs of the BE.
import * as fs from "node:fs";
import * as path from "node:path";

const INCBIN = /\.incbin\s+\\?"([^"\\]+)\\?"/g;

/** The file names `.incbin`ed in a piece of C or asm source. */
export function incbinNames(text: string): string[] {
  const names: string[] = [];
  for (const m of text.matchAll(INCBIN)) names.push(m[1]);
  return names;
}

/** Finds the files a module's sources `.incbin`, memoizing each scanned file. */
export class IncbinScanner {
  /** file → what it `.incbin`s, valid while its size and mtime stay the same. */
  private readonly memo = new Map<string, { size: number; mtimeMs: number; names: string[] }>();
  /** Files already checked against the disk in this epoch (one stat each, not one per user). */
  private fresh = new Set<string>();
  /** A dep as kbuild records it → its absolute path: the same few thousand names recur in every
   * unit's deps (a path.resolve for each of them was a quarter of the daemon's start). */
  private readonly absOf = new Map<string, string>();

  constructor(private readonly buildDir: string, private readonly srcTree: string) {}

  /** Starts a new epoch: files are checked against the disk again on their next use. */
  newEpoch(): void {
    this.fresh = new Set();
  }

  private scan(file: string): string[] {
    const m0 = this.memo.get(file);
    if (m0 && this.fresh.has(file)) return m0.names;
    this.fresh.add(file);
    const st = fs.statSync(file, { throwIfNoEntry: false });
    if (!st) return []; // a dep that vanished: make would rebuild the object; nothing to scan
    const m = this.memo.get(file);
    if (m && m.size === st.size && m.mtimeMs === st.mtimeMs) return m.names;
    // Searched as bytes: most files have no `.incbin`, and are never made a string.
    const bytes = fs.readFileSync(file);
    const names = bytes.includes(".incbin") ? incbinNames(bytes.toString("latin1")) : [];
    this.memo.set(file, { size: st.size, mtimeMs: st.mtimeMs, names });
    return names;
  }

  /** Build-dir-relative paths of the files the module includes with `.incbin`. The
   * assembler looks in its working directory (the build dir) first, then the source tree. */
  filesOf(source: string | undefined, deps: readonly string[]): string[] {
    const out = new Set<string>();
    for (const f of source ? [source, ...deps] : deps) {
      let abs = this.absOf.get(f);
      if (abs === undefined) this.absOf.set(f, (abs = path.resolve(this.buildDir, f)));
      for (const name of this.scan(abs)) {
        const inBuild = path.resolve(this.buildDir, name);
        const resolved = fs.existsSync(inBuild) ? inBuild : path.resolve(this.srcTree, name);
        out.add(path.relative(this.buildDir, resolved));
      }
    }
    return [...out].sort();
  }
}
