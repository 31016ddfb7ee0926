// Cached natives, stored by content hash in a directory of plain files.
//
// Why files and not LMDB values: natives run from a few KiB to a few MiB, and a restore is
// just a copy into the build dir. As files, a restore is one copy_file_range in the kernel
// and a write is temp-file-then-rename (atomic, nothing half-written is ever visible);
// eviction is an unlink that gives the space back at once, where an LMDB file never
// shrinks. LMDB keeps the small records that say which key made which blob; a copy of
// each lies beside the blobs (`by-key/`), so that a store lost to a crash or damage costs
// restores, not a BE of every module.
import { NO_ROOM } from "./base/errors";
import * as fs from "node:fs";
import * as path from "node:path";
import { Hash, hashFile } from "./base/hash";
import { killPoint } from "./base/killpoint";
import { TEMP_SUFFIX } from "./kbuild/names";

/** The cache's size cap unless --max-size says otherwise (LRU eviction after each build). */
export const DEFAULT_CACHE_CAP = 2 * 1024 ** 3;


export class BlobDir {
  /** The blobs' total, counted once per process and then kept as blobs come and go (one
   * process per state dir), so that a build's GC check does not walk the directory. */
  private total?: { bytes: number; count: number };

  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  pathOf(hash: Hash): string {
    return path.join(this.dir, hash.slice(0, 2), hash);
  }

  private keyPath(key: Hash): string {
    return path.join(this.dir, "by-key", key.slice(0, 2), key);
  }

  /** Notes which native a BE key made (best effort: the store has the same record). */
  putKey(key: Hash, entry: { native: Hash; size: number; object: string }): void {
    const file = this.keyPath(key);
    try {
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
      fs.writeFileSync(`${file}.tmp-${process.pid}`, JSON.stringify(entry));
      fs.renameSync(`${file}.tmp-${process.pid}`, file);
    } catch (e) {
      if (!NO_ROOM.has((e as NodeJS.ErrnoException).code ?? "")) throw e;
    }
  }

  /** The native a BE key made, from the note beside the blobs; undefined if none or garbled. */
  entryFor(key: Hash): { native: Hash; size: number; object: string; lastUsed: number } | undefined {
    try {
      const e = JSON.parse(fs.readFileSync(this.keyPath(key), "utf8")) as { native: unknown; size: unknown; object: unknown };
      if (typeof e.native !== "string" || typeof e.size !== "number" || typeof e.object !== "string") return undefined;
      return { native: e.native, size: e.size, object: e.object, lastUsed: 0 };
    } catch {
      return undefined;
    }
  }

  removeKey(key: Hash): void {
    fs.rmSync(this.keyPath(key), { force: true });
  }

  /** Removes the temp files of blobs and key notes a ktld that died was writing (`.tmp-<pid>`).
   * Called with the state dir's lock held, so none of them is being written. */
  sweepTemps(): number {
    let n = 0;
    const byKey = path.join(this.dir, "by-key");
    for (const root of [this.dir, byKey]) {
      const shards = fs.existsSync(root) ? fs.readdirSync(root) : [];
      for (const shard of shards.filter((x) => /^[0-9a-f]{2}$/.test(x))) {
        for (const name of fs.readdirSync(path.join(root, shard))) {
          if (!/\.tmp-\d+$/.test(name)) continue;
          fs.rmSync(path.join(root, shard, name), { force: true });
          n++;
        }
      }
    }
    if (n) this.total = undefined;
    return n;
  }

  has(hash: Hash): boolean {
    return fs.existsSync(this.pathOf(hash));
  }

  /** Copies `file` (whose content hash the caller computed) into the store. False if the
   * state dir has no room (or is read-only): the native is then simply not cached. */
  put(file: string, hash: Hash): boolean {
    const dest = this.pathOf(hash);
    if (fs.existsSync(dest)) return true;
    const tmp = `${dest}.tmp-${process.pid}`;
    try {
      fs.mkdirSync(path.dirname(dest), { recursive: true, mode: 0o700 });
      fs.copyFileSync(file, tmp);
      const size = fs.statSync(tmp).size;
      killPoint("native:cache-write");
      fs.renameSync(tmp, dest);
      if (this.total) this.total = { bytes: this.total.bytes + size, count: this.total.count + 1 };
      return true;
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      if (NO_ROOM.has((e as NodeJS.ErrnoException).code ?? "")) return false;
      throw e;
    }
  }

  /** Copies a blob to `dest` (atomically) after checking its bytes against its name.
   * Returns false, and drops the blob, if it is missing or corrupt. */
  restore(hash: Hash, dest: string): boolean {
    const src = this.pathOf(hash);
    const tmp = `${dest}${TEMP_SUFFIX}`;
    try {
      fs.copyFileSync(src, tmp);
    } catch {
      return false;
    }
    if (hashFile(tmp) !== hash) {
      fs.rmSync(tmp, { force: true });
      this.remove(hash);
      return false;
    }
    fs.renameSync(tmp, dest);
    return true;
  }

  remove(hash: Hash): void {
    const size = fs.statSync(this.pathOf(hash), { throwIfNoEntry: false })?.size;
    fs.rmSync(this.pathOf(hash), { force: true });
    if (this.total && size !== undefined) this.total = { bytes: this.total.bytes - size, count: this.total.count - 1 };
  }

  /** Removes every blob and note. */
  clear(): void {
    fs.rmSync(this.dir, { recursive: true, force: true });
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    this.total = { bytes: 0, count: 0 };
  }

  /** Total bytes and count of the blobs on disk (walked once, then kept up to date). */
  usage(): { bytes: number; count: number } {
    this.total ??= this.walk();
    return this.total;
  }

  private walk(): { bytes: number; count: number } {
    let bytes = 0;
    let count = 0;
    for (const sub of fs.readdirSync(this.dir)) {
      if (sub.length !== 2) continue; // by-key/
      const d = path.join(this.dir, sub);
      if (!fs.statSync(d).isDirectory()) continue;
      for (const f of fs.readdirSync(d)) {
        if (f.includes(".tmp-")) continue;
        bytes += fs.statSync(path.join(d, f)).size;
        count++;
      }
    }
    return { bytes, count };
  }
}
