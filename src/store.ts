// The one place that knows LMDB. Records only: natives live in the blob directory
// (see blobs.ts for why).
import { spawnSync } from "node:child_process";
import { markedEnv } from "./base/process";
import * as fs from "node:fs";
import * as path from "node:path";
import { open, RootDatabase, Database, Key } from "lmdb";
import { Hash, hashFile } from "./base/hash";
import type { BootJson, HistoryJson } from "./protocol";

/** What the last successful BE of a bitcode unit was made from, and what it made. */
export interface UnitRecord {
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

/** One finished build, for `ktld status` and `ktld why` (its shape is the wire's). */
export type BuildHistoryEntry = HistoryJson;
export type { BootJson };

/** What `.tmp_initcalls.lds` was last generated from: per object, its hash and the
 * `__initcall__` symbols it defines (the only thing of an object the generator reads). */
export interface InitcallRecord {
  readonly lds: Hash;
  readonly members: Hash;
  readonly objects: Record<string, { hash: Hash; sig: string }>;
}

/** One object linked into vmlinux, as the BTF record knows it. */
export interface BtfInput {
  readonly path: string;
  readonly hash: Hash;
  /** Its superset BTF's hash, when it was computed. */
  readonly sbtf?: Hash;
  /** Earlier states of this object (by the hash of their bytes) whose superset BTF differs
   * from this one's only in simple types that the objects before it have (src/btftypes.ts):
   * each with the earlier objects that have those types (index in the link, and hash). */
  readonly sameTypes?: readonly { readonly was: Hash; readonly witnesses: readonly { readonly index: number; readonly hash: Hash }[] }[];
  /** Why it was not shown so, when ktld looked. */
  readonly whyNotSame?: string;
}

/** What the last .BTF of vmlinux was encoded from (or shown equal to), and its bytes' hash
 * (the bytes are kept in the state dir, `btf/<hash>`; src/btf.ts). */
export interface BtfRecord {
  /** pahole's version and arguments. */
  readonly pahole: string;
  readonly inputs: readonly BtfInput[];
  /** btfSymbolsKey of the image pahole encoded. */
  readonly symbols: Hash;
  readonly btf: Hash;
  /** A record of pahole run ahead of objtool (src/btfahead.ts), for one link only: its key
   * leaves out the function names that begin with this (objtool's prefix symbols). */
  readonly leaveOut?: string;
}

/** A link target's last thin-link: the key of what it read, the units it loaded (in link
 * order), the hash of the index and imports files it left. */
export interface ThinLinkRecord {
  readonly key: Hash;
  readonly units: readonly string[];
  readonly outputs: Hash;
}

/** What ktld last made of one kernel module: its thin-link; the key of the module object's
 * link and the object it made. */
export interface ModuleTargetRecord {
  readonly thinlink?: ThinLinkRecord;
  readonly link?: { readonly key: Hash; readonly object: Hash | null };
}

/** The name of the per-unit database before the rename (see `Store.migrate`). */
const LEGACY_UNITS_DB = "modules";

/** Whether the root database lists a named one (without opening it, which creates it). */
function hasNamedDb(root: RootDatabase, name: string): boolean {
  for (const _ of root.getKeys({ start: name, end: `${name}\0`, limit: 1 })) return true;
  return false;
}

/** Below this much free space under the store, ktld writes nothing to it. */
const LOW_WATER = 64 * 1024 * 1024;

/** The store's single records, by name: what the build steps keep between builds. */
/** What a file's stat says of its identity: any write to it moves one of these. */
export interface FileStat {
  readonly size: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
  readonly ino: number;
}

/** The stat of `file` as a FileStat (null if it does not exist). */
export function fileStat(file: string): FileStat | null {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  return st ? { size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino } : null;
}

export function sameStat(a: FileStat | null | undefined, b: FileStat | null): boolean {
  return !!a && !!b && typeof a === "object" && a.size === b.size && a.mtimeMs === b.mtimeMs && a.ctimeMs === b.ctimeMs && a.ino === b.ino;
}

export interface ModulesFinalRecord {
  readonly symvers: Hash | null;
  readonly btf: Hash | null;
  readonly kos: Readonly<Record<string, Hash | null>>;
}

export interface MetaRecords {
  /** vmlinux's last thin-link. */
  thinlink: ThinLinkRecord;
  /** The initcall order kbuild's generator gave, and what it was derived from. */
  initcalls: InitcallRecord;
  /** The last native link: the key of its inputs and the vmlinux it made, by its stat (a
   * vmlinux is 10-150 MB: hashing it cost 0.3 s a build; any write to it moves its ctime). */
  link: { key: Hash; vmlinux: FileStat | null };
  /** The last build succeeded (vmlinux is what the recorded inputs make). */
  lastOk: boolean;
  /** Per kernel module (by name): its last thin-link and module link. */
  kernelModules: Record<string, ModuleTargetRecord>;
  /** What the modules' kbuild steps (modpost, the .ko link and BTF) last ran against: vmlinux's
   * symbol versions and BTF, and the `.ko` files they left (src/modulebuild.ts). */
  modulesFinal: ModulesFinalRecord;
  /** Objects whose FE replay failed: redone by the next build whatever their sources say. */
  feDirty: string[];
  /** What vmlinux's last .BTF (and a few before it) were encoded from, newest first (src/btf.ts). */
  btf: readonly BtfRecord[];
  /** Natives restored over the state dir's life: from the local cache, from the shared one. */
  hits: { local: number; shared: number };
}

export interface StoreOptions {
  readonly path: string;
  readonly log?: (msg: string) => void;
}

export class Store {
  private constructor(
    private readonly root: RootDatabase,
    /** Per bitcode unit (by object): its last BE (the `modules` database of stores before
     * the rename, moved over on open: `Store.migrate`). */
    private readonly units: Database<UnitRecord, string>,
    private readonly cache: Database<CacheEntry, string>,
    private readonly meta: Database<unknown, string>,
    /** Content hash of each source, header and object as of the last successful build. */
    private readonly files: Database<string, string>,
    private readonly history: Database<BuildHistoryEntry, number>,
  ) {}

  // Per bitcode unit: the record of its last BE.

  unit(object: string): UnitRecord | undefined {
    return this.units.get(object);
  }

  putUnit(object: string, rec: UnitRecord): Promise<boolean> {
    return this.units.put(object, rec);
  }

  unitCount(): number {
    return this.units.getKeysCount();
  }

  /** The natives the units' records name (a cached native still in use). */
  unitNatives(): Set<Hash> {
    return new Set([...this.units.getRange()].map(({ value }) => value.native));
  }

  // The BE cache's entries: a job's key → the native it made.

  cacheEntry(key: Hash): CacheEntry | undefined {
    return this.cache.get(key);
  }

  putCacheEntry(key: Hash, entry: CacheEntry): Promise<boolean> {
    return this.cache.put(key, entry);
  }

  removeCacheEntry(key: Hash): Promise<boolean> {
    return this.cache.remove(key);
  }

  cacheEntries(): { key: Hash; entry: CacheEntry }[] {
    return [...this.cache.getRange()].map(({ key, value }) => ({ key, entry: value }));
  }

  cacheCount(): number {
    return this.cache.getKeysCount();
  }

  // The baseline: each input file's hash as of the last successful build.

  baseline(file: string): Hash | undefined {
    return this.files.get(file);
  }

  baselineCount(): number {
    return this.files.getKeysCount();
  }

  /** A successful build's end, in one transaction: the files' new hashes (null: the file is
   * gone), the last build ok, no FE left dirty. */
  async commitBaseline(hashes: Iterable<readonly [string, Hash | null]>): Promise<void> {
    await this.root.transaction(() => {
      for (const [f, h] of hashes) {
        if (h === null) this.files.remove(f);
        else this.files.put(f, h);
      }
      this.meta.put("lastOk", true);
      this.meta.put("feDirty", []);
    });
  }

  // The history of finished builds, by id.

  /** Newest first. */
  recentBuilds(limit: number): BuildHistoryEntry[] {
    return [...this.history.getRange({ reverse: true, limit })].map((e) => e.value);
  }

  build(id: number): BuildHistoryEntry | undefined {
    return this.history.get(id);
  }

  /** Records a build and forgets those `keep` or more ids older. */
  async appendBuild(entry: BuildHistoryEntry, keep: number): Promise<void> {
    await this.history.put(entry.id, entry);
    for (const old of this.history.getKeys({ end: entry.id - keep })) await this.history.remove(old);
  }

  /** Rewrites a recorded build (its boot verdict came). */
  async putBuild(entry: BuildHistoryEntry): Promise<void> {
    await this.history.put(entry.id, entry);
  }

  buildCount(): number {
    return this.history.getKeysCount();
  }

  /** Opens the store; one that cannot be opened, or fails its check, is moved aside (and
   * reported), and a fresh one is created: the store is a cache of facts that a build can
   * re-derive.
   *
   * LMDB maps the file and has no checksums: a file cut short makes a read past its end
   * (SIGBUS), flipped bytes can send it anywhere. So a store that was not closed cleanly
   * (its `.clean` stamp is not the hash of its bytes) is first read through, every record,
   * in a child process: if that child dies or finds a record of the wrong shape, this
   * process never maps the file. */
  static open(opts: StoreOptions): Store {
    fs.mkdirSync(path.dirname(opts.path), { recursive: true, mode: 0o700 });
    const moveAside = (why: string) => {
      const aside = `${opts.path}.corrupt-${Date.now()}`;
      opts.log?.(`ktld: the store at ${opts.path} is damaged (${why}); moved it to ${aside} and starting afresh`);
      fs.renameSync(opts.path, aside);
      fs.rmSync(Store.stampOf(opts.path), { force: true });
    };
    if (fs.existsSync(opts.path) && !Store.closedCleanly(opts.path)) {
      const why = Store.checkInChild(opts.path);
      if (why) moveAside(why);
    }
    fs.rmSync(Store.stampOf(opts.path), { force: true });
    let store: Store;
    try {
      store = Store.openAt(opts.path, opts.path);
    } catch (e) {
      moveAside((e as Error).message);
      store = Store.openAt(opts.path, opts.path);
    }
    store.migrate();
    return store;
  }

  /** Stores made before bitcode units and kernel modules had names of their own kept the
   * per-unit records in a database called `modules`: moved into `units`, and that one
   * dropped. */
  private migrate(): void {
    if (!this.roomy()) return;
    // vmlinux's thin-link record named its units `modules`: one shape for every target now.
    const thin = this.meta.get("thinlink") as { key: Hash; modules?: readonly string[]; units?: readonly string[]; outputs?: Hash } | undefined;
    if (thin && !thin.units && Array.isArray(thin.modules)) this.meta.putSync("thinlink", { key: thin.key, units: thin.modules, outputs: thin.outputs ?? "" });
    // The root database lists the named ones: only an old store pays for a look.
    if (!hasNamedDb(this.root, LEGACY_UNITS_DB)) return;
    const legacy = this.root.openDB<UnitRecord, string>({ name: LEGACY_UNITS_DB });
    this.root.transactionSync(() => {
      for (const { key, value } of legacy.getRange()) if (this.units.get(key) === undefined) this.units.putSync(key, value);
      legacy.dropSync();
    });
  }

  private static stampOf(p: string): string {
    return `${p}.clean`;
  }

  private static dataFile(p: string): string {
    return fs.statSync(p, { throwIfNoEntry: false })?.isDirectory() ? path.join(p, "data.mdb") : p;
  }

  private static closedCleanly(p: string): boolean {
    try {
      return fs.readFileSync(Store.stampOf(p), "utf8").trim() === hashFile(Store.dataFile(p));
    } catch {
      return false;
    }
  }

  /** Reads every record in a child; undefined if all is well, else what went wrong. */
  private static checkInChild(p: string): string | undefined {
    const r = spawnSync(process.execPath, [path.join(__dirname, "storecheck.js"), p], { encoding: "utf8", timeout: 60_000, env: markedEnv() });
    if (r.status === 0) return undefined;
    if (r.signal) return `reading it killed a checker with ${r.signal}`;
    return r.stdout.trim() || r.stderr.trim().split("\n").pop() || `check exited ${r.status}`;
  }

  /** Reads every record of every database; throws at the first that is not what ktld wrote. */
  static checkAll(p: string): number {
    const s = Store.openAt(p, undefined);
    let n = 0;
    const isStr = (v: unknown) => typeof v === "string";
    const shape = (db: string, ok: (v: unknown) => boolean, key: unknown, v: unknown) => {
      if (!ok(v)) throw new Error(`${db} record ${String(key).slice(0, 80)} is not what ktld writes`);
      n++;
    };
    const legacy = hasNamedDb(s.root, LEGACY_UNITS_DB) ? s.root.openDB<UnitRecord, string>({ name: LEGACY_UNITS_DB }) : undefined;
    for (const [name, db] of [["units", s.units], ...(legacy ? [[LEGACY_UNITS_DB, legacy] as const] : [])] as const) {
      for (const { key, value } of db.getRange()) {
        shape(name, (v) => {
          const r = v as UnitRecord;
          return !!r && isStr(r.key) && isStr(r.native) && isStr(r.index) && isStr(r.bitcode) && typeof r.nativeStat?.mtimeMs === "number"
            && typeof r.imports === "object" && r.imports !== null && typeof r.incbin === "object" && r.incbin !== null;
        }, key, value);
      }
    }
    for (const { key, value } of s.cache.getRange()) shape("cache", (v) => isStr((v as CacheEntry)?.native) && typeof (v as CacheEntry).size === "number", key, value);
    for (const { key, value } of s.files.getRange()) shape("files", isStr, key, value);
    for (const { key, value } of s.history.getRange()) shape("history", (v) => typeof (v as BuildHistoryEntry)?.id === "number", key, value);
    for (const { key, value } of s.meta.getRange()) shape("meta", (v) => v !== undefined, key, value);
    // A damaged branch page can end an iteration early without an error, while another walk
    // of the same tree (a count, the next write's) reaches the missing pages and dies of
    // SIGBUS: each database is counted too, and must hold what was read (found by the soak:
    // a store cut short passed the read-through, and the daemon died once it was serving).
    const dbs = { units: s.units, ...(legacy ? { [LEGACY_UNITS_DB]: legacy } : {}), cache: s.cache, files: s.files, history: s.history, meta: s.meta } as Record<string, Database<unknown, Key>>;
    let counted = 0;
    for (const [name, db] of Object.entries(dbs)) {
      const c = db.getKeysCount();
      let keys = 0;
      for (const _ of db.getKeys()) keys++;
      if (c !== keys) throw new Error(`${name}: ${c} records counted, ${keys} keys read`);
      counted += c;
    }
    if (counted !== n) throw new Error(`${counted} records counted, ${n} read`);
    void s.root.close();
    return n;
  }

  /** Where to stamp the store clean on close (not for the checker's read-only pass). */
  private stampPath?: string;
  private dir = ".";

  private static openAt(p: string, stampFor: string | undefined): Store {
    const root = open({ path: p, compression: true, maxDbs: 8 });
    const store = new Store(
      root,
      root.openDB<UnitRecord, string>({ name: "units" }),
      root.openDB<CacheEntry, string>({ name: "cache" }),
      root.openDB<unknown, string>({ name: "meta" }),
      root.openDB<string, string>({ name: "files" }),
      root.openDB<BuildHistoryEntry, number>({ name: "history" }),
    );
    // Touch every database once so that a damaged file fails here, not mid-build.
    store.meta.get("version");
    for (const _ of store.cache.getKeys({ limit: 1 })) void _;
    store.stampPath = stampFor;
    store.dir = p;
    return store;
  }

  /** Whether the store's file system has room for writes. lmdb aborts the process when a
   * commit meets a full disk, so writers ask first and skip the write when it has not:
   * everything the store holds can be derived again. */
  roomy(): boolean {
    try {
      const st = fs.statfsSync(this.dir);
      return st.bavail * st.bsize >= LOW_WATER;
    } catch {
      return true;
    }
  }

  /** Closes the store and stamps it clean (see open). */
  async close(): Promise<void> {
    await this.root.close();
    if (this.stampPath) {
      const h = hashFile(Store.dataFile(this.stampPath));
      // No stamp (a full disk) only means the next open checks the store first.
      try {
        if (h) fs.writeFileSync(Store.stampOf(this.stampPath), `${h}\n`);
      } catch {
        fs.rmSync(Store.stampOf(this.stampPath), { force: true });
      }
    }
  }

  /** Waits for every pending write to commit. */
  async flush(): Promise<void> {
    await this.root.flushed;
  }

  /** `ktld cache clear`: forgets every record a later build could reuse — cached natives,
   * module records, file hashes, and the thin-link, initcall and link records — so that the
   * next build redoes every step as a clean build would. Only the history stays. */
  async forgetBuildRecords(): Promise<void> {
    await this.root.transaction(() => {
      for (const db of [this.cache, this.units, this.files, this.meta] as Database<unknown, string>[]) {
        for (const k of db.getKeys()) db.remove(k);
      }
    });
  }

  getMeta<K extends keyof MetaRecords>(name: K): MetaRecords[K] | undefined {
    return this.meta.get(name) as MetaRecords[K] | undefined;
  }

  /** Writes a record; undefined forgets it. */
  putMeta<K extends keyof MetaRecords>(name: K, value: MetaRecords[K] | undefined): Promise<boolean> {
    return value === undefined ? this.meta.remove(name) : this.meta.put(name, value);
  }
}
