// The one cache of natives: the entries (the store's `cache` database: the key of a BE job →
// the native it made, with its size and last use) and the blobs (src/blobs.ts: the natives'
// bytes by content hash, and a note per key beside them), with every rule that spans the two
// in one place: an entry counts only with its blob, a put writes the blob before the entry,
// a corrupt blob drops its entry, eviction is least recently used under a cap and keeps the
// blobs still referenced, and a clear forgets every record a clean build must not reuse.
// Writes go through `write` (the caller's full-disk rule: src/backendphase.ts).
import { BlobDir } from "./blobs";
import { FileNotes } from "./filenotes";
import type { Hash } from "./base/hash";
import { CacheEntry, Store } from "./store";

export interface CacheStats {
  /** Entries (BE keys) in the store. */
  readonly entries: number;
  /** Natives on disk, and their bytes. */
  readonly blobs: number;
  readonly bytes: number;
  /** Bitcode units with a record of their last BE. */
  readonly units: number;
}

export type StoreWrite = (write: () => Promise<unknown>) => Promise<unknown>;

export class NativeCache {
  /** `notesPath`: the file hashes' journal beside the store, forgotten by a clear. */
  constructor(readonly store: Store, readonly blobs: BlobDir, private readonly notesPath?: string) {}

  /** The entry of a BE key whose native is on disk: from the store, or from the note beside
   * the blobs (a store lost to damage costs restores, not compiles). */
  lookup(key: Hash): CacheEntry | undefined {
    const e = this.store.cacheEntry(key) ?? this.blobs.entryFor(key);
    return e && this.blobs.has(e.native) ? e : undefined;
  }

  /** What the store or the note beside the blobs says `key` made, whether or not its blob is
   * still there. */
  noted(key: Hash): CacheEntry | undefined {
    return this.store.cacheEntry(key) ?? this.blobs.entryFor(key);
  }

  /** Files `file` (bytes hashing to `native`) under `key`. False if the blob dir had no room
   * (nothing was written). */
  put(key: Hash, object: string, file: string, native: Hash, size: number, write: StoreWrite): { stored: boolean; written: Promise<void> } {
    if (!this.blobs.put(file, native)) return { stored: false, written: Promise.resolve() };
    const entry: CacheEntry = { native, size, object, lastUsed: Date.now() };
    this.blobs.putKey(key, entry);
    return { stored: true, written: write(() => this.store.putCacheEntry(key, entry)).then(() => undefined) };
  }

  /** Copies the native of `entry` to `dest` (unless `dest` already has its bytes) and stamps
   * its use. False, having dropped the entry, if its blob is gone or corrupt. */
  restore(key: Hash, entry: CacheEntry, dest: string, destHash: Hash | null, write: StoreWrite): { restored: boolean; written: Promise<void> } {
    if (destHash !== entry.native && !this.blobs.restore(entry.native, dest)) {
      this.blobs.removeKey(key);
      return { restored: false, written: write(() => this.store.removeCacheEntry(key)).then(() => undefined) };
    }
    return { restored: true, written: write(() => this.store.putCacheEntry(key, { ...entry, lastUsed: Date.now() })).then(() => undefined) };
  }

  stats(): CacheStats {
    const usage = this.blobs.usage();
    return { entries: this.store.cacheCount(), blobs: usage.count, bytes: usage.bytes, units: this.store.unitCount() };
  }

  /** Evicts least-recently-used entries until the blobs fit under `cap` bytes; a blob still
   * named by another entry or by a unit's record stays. */
  async collectGarbage(cap: number): Promise<{ evicted: number; bytes: number }> {
    const { store, blobs } = this;
    // Under the cap (the usual case): nothing to read.
    if (blobs.usage().bytes <= cap) return { evicted: 0, bytes: blobs.usage().bytes };
    const entries = store.cacheEntries().map(({ key, entry }) => ({ key, value: entry }));
    const inUse = store.unitNatives();
    let total = blobs.usage().bytes;
    let evicted = 0;
    const refs = new Map<string, number>();
    for (const e of entries) refs.set(e.value.native, (refs.get(e.value.native) ?? 0) + 1);
    entries.sort((a, b) => a.value.lastUsed - b.value.lastUsed);
    for (const { key, value } of entries) {
      if (total <= cap) break;
      await store.removeCacheEntry(key);
      blobs.removeKey(key);
      const left = refs.get(value.native)! - 1;
      refs.set(value.native, left);
      if (left === 0 && !inUse.has(value.native) && blobs.has(value.native)) {
        blobs.remove(value.native);
        total -= value.size;
      }
      evicted++;
    }
    return { evicted, bytes: total };
  }

  /** `ktld cache clear`: every native, and every record a later build could reuse (the
   * store's `forgetBuildRecords`, the file hashes' journal). Returns what was dropped. */
  async clear(): Promise<{ cleared: number; bytes: number }> {
    await this.store.forgetBuildRecords();
    if (this.notesPath) new FileNotes(this.notesPath).clear();
    const gone = this.blobs.usage();
    this.blobs.clear();
    return { cleared: gone.count, bytes: gone.bytes };
  }
}
