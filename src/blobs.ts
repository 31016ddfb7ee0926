// Cached natives, stored by content hash in a directory of plain files.
//
// Why files and not LMDB values: natives run from a few KiB to a few MiB, and a restore is
// just a copy into the build dir. As files, a restore is one copy_file_range in the kernel
// and a write is temp-file-then-rename (atomic, nothing half-written is ever visible);
// eviction is an unlink that gives the space back at once, where an LMDB file never
// shrinks. LMDB keeps the small records that say which key made which blob.
import * as fs from "node:fs";
import * as path from "node:path";
import { Hash, hashFile } from "./hash";

/** Errors that mean "the state dir cannot take this write", not "ktld is broken". */
export const NO_ROOM: ReadonlySet<string> = new Set(["ENOSPC", "EDQUOT", "EROFS", "EFBIG"]);

export class BlobDir {
  constructor(readonly dir: string) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  }

  pathOf(hash: Hash): string {
    return path.join(this.dir, hash.slice(0, 2), hash);
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
      fs.renameSync(tmp, dest);
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
    const tmp = `${dest}.ktld-tmp`;
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
    fs.rmSync(this.pathOf(hash), { force: true });
  }

  /** Total bytes and count of the blobs on disk. */
  usage(): { bytes: number; count: number } {
    let bytes = 0;
    let count = 0;
    for (const sub of fs.readdirSync(this.dir)) {
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
