// The one place that knows LMDB. Records only: natives live in the blob directory
// (see blobs.ts for why).
import * as fs from "node:fs";
import * as path from "node:path";
import { open, RootDatabase, Database } from "lmdb";
import { Hash } from "./hash";

/** What the last successful BE of a module was made from, and what it made. */
export interface ModuleRecord {
  readonly key: Hash;
  readonly bitcode: Hash;
  readonly index: Hash;
  readonly imports: Readonly<Record<string, Hash>>;
  readonly argv: Hash;
  readonly clang: string;
  readonly incbin: Readonly<Record<string, Hash | null>>;
  readonly native: Hash;
  /** stat of the native as written, to trust it without rehashing while it is untouched. */
  readonly nativeStat: { readonly size: number; readonly mtimeMs: number; readonly ino: number };
  /** How long its last BE compile took (to start the longest jobs first). */
  readonly ms?: number;
}

/** One entry of the BE cache: the key of a job → the native it made. */
export interface CacheEntry {
  readonly native: Hash;
  readonly size: number;
  readonly object: string;
  lastUsed: number;
}

/** One finished build, for `ktld status` and `ktld why`. */
export interface BuildHistoryEntry {
  readonly id: number;
  readonly startedAt: number;
  readonly trigger: readonly string[];
  readonly ok: boolean;
  readonly report: unknown;
}

export interface StoreOptions {
  readonly path: string;
  readonly log?: (msg: string) => void;
}

export class Store {
  private constructor(
    private readonly root: RootDatabase,
    readonly modules: Database<ModuleRecord, string>,
    readonly cache: Database<CacheEntry, string>,
    readonly meta: Database<unknown, string>,
    /** Content hash of each source, header and object as of the last successful build. */
    readonly files: Database<string, string>,
    readonly history: Database<BuildHistoryEntry, number>,
  ) {}

  /** Opens the store; one that cannot be opened is moved aside (and reported), and a
   * fresh one is created: the store is a cache of facts that a build can re-derive. */
  static open(opts: StoreOptions): Store {
    fs.mkdirSync(path.dirname(opts.path), { recursive: true, mode: 0o700 });
    try {
      return Store.openAt(opts.path);
    } catch (e) {
      const aside = `${opts.path}.corrupt-${Date.now()}`;
      opts.log?.(`ktld: the store at ${opts.path} cannot be opened (${(e as Error).message}); moved it to ${aside} and starting afresh`);
      fs.renameSync(opts.path, aside);
      return Store.openAt(opts.path);
    }
  }

  private static openAt(p: string): Store {
    const root = open({ path: p, compression: true, maxDbs: 8 });
    const store = new Store(
      root,
      root.openDB<ModuleRecord, string>({ name: "modules" }),
      root.openDB<CacheEntry, string>({ name: "cache" }),
      root.openDB<unknown, string>({ name: "meta" }),
      root.openDB<string, string>({ name: "files" }),
      root.openDB<BuildHistoryEntry, number>({ name: "history" }),
    );
    // Touch every database once so that a damaged file fails here, not mid-build.
    store.meta.get("version");
    for (const _ of store.cache.getKeys({ limit: 1 })) void _;
    return store;
  }

  async close(): Promise<void> {
    await this.root.close();
  }

  /** Waits for every pending write to commit. */
  async flush(): Promise<void> {
    await this.root.flushed;
  }

  async transaction(fn: () => void): Promise<void> {
    await this.root.transaction(fn);
  }
}
