// File hash notes: the content hash of every input file as of the last successful build,
// kept beside the store in a plain append-only log (`<state>/files.log`, one
// `<sha256>\t<path>` line per change, `-\t<path>` for a file gone; last line wins). The store
// holds the same facts; the log is what is left when the store was lost to a crash or damage,
// so that ktld still judges files by content then, not by mtime (a `git stash` that rewrote
// files with their old bytes costs no FE job). Read whole at start; a line cut short by a
// crash is ignored; rewritten whole when it has grown to four times its live entries.
import * as fs from "node:fs";
import type { Hash } from "./base/hash";

const HASH = /^[0-9a-f]{64}$/;

export class FileNotes {
  private readonly map = new Map<string, Hash>();
  private lines = 0;

  constructor(readonly file: string) {
    let text = "";
    try {
      text = fs.readFileSync(file, "utf8");
    } catch {
      return;
    }
    const all = text.split("\n");
    if (!text.endsWith("\n")) all.pop(); // a last line cut short
    for (const line of all) {
      const tab = line.indexOf("\t");
      if (tab < 0) continue;
      const h = line.slice(0, tab);
      const f = line.slice(tab + 1);
      if (h === "-") this.map.delete(f);
      else if (HASH.test(h) && f) this.map.set(f, h);
      this.lines++;
    }
  }

  get(file: string): Hash | undefined {
    return this.map.get(file);
  }

  get size(): number {
    return this.map.size;
  }

  /** Records the hashes of a successful build (null: the file is gone). Writes only what
   * differs from the notes; a write that fails (no room) is skipped: the notes are a fallback. */
  record(hashes: ReadonlyMap<string, Hash | null>): void {
    const changed: string[] = [];
    for (const [f, h] of hashes) {
      if (f.includes("\n") || f.includes("\t")) continue;
      if (h === null ? !this.map.has(f) : this.map.get(f) === h) continue;
      if (h === null) this.map.delete(f);
      else this.map.set(f, h);
      changed.push(`${h ?? "-"}\t${f}\n`);
    }
    if (!changed.length) return;
    try {
      if (this.lines + changed.length > 4 * Math.max(this.map.size, 1000)) {
        const tmp = `${this.file}.tmp-${process.pid}`;
        fs.writeFileSync(tmp, [...this.map].map(([f, h]) => `${h}\t${f}\n`).join(""));
        fs.renameSync(tmp, this.file);
        this.lines = this.map.size;
      } else {
        fs.appendFileSync(this.file, changed.join(""));
        this.lines += changed.length;
      }
    } catch {
      // no room, or a read-only state dir: the store has the facts; the notes are a fallback
    }
  }

  /** `ktld cache clear`: forgets every note. */
  clear(): void {
    this.map.clear();
    this.lines = 0;
    fs.rmSync(this.file, { force: true });
  }
}
