// One build of vmlinux's LTO link: thin-link, the BE jobs whose inputs changed, link.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BackendAction, BackendInputs, argvHash, backendArgv, importsPath, indexPath, nativePath, planBackend, NativeState } from "./backend";
import { BlobDir, DEFAULT_CACHE_CAP, NO_ROOM } from "./blobs";
import { BuildFailure, Cancelled, KtldError } from "./errors";
import { runProcess } from "./process";
import { endProfile, ProfileReport, section, startProfile } from "./profile";
import type { DaemonEvent } from "./protocol";
import { Hash, HashCache, hashFields, hashFile, isWholeElf64 } from "./hash";
import { IncbinScanner } from "./incbin";
import { kbuildEnv } from "./kbuild/env";
import { checkWritable, importTree, KbuildTree } from "./kbuild/tree";
import { initcallSignatures, InitcallRecord, linkVmlinux, nativeInputs, vmlinuxOArgv } from "./link";
import { JobPool } from "./pool";
import { CacheEntry, ModuleRecord, Store } from "./store";
import { StateDir } from "./state";
import { publishIndexFiles, thinLinkArgv } from "./thinlink";
import { resolveToolchain, Toolchain } from "./toolchain";

export interface BuildOptions {
  readonly buildDir: string;
  readonly stateDir?: string;
  readonly jobs?: number;
  /** kbuild-style progress lines (`  LTO     kernel/fork.o [3/12]`). */
  readonly log?: (line: string) => void;
  /** Cache size cap in bytes (LRU eviction after each build). */
  readonly cacheCap?: number;
}

export interface JobRecord {
  readonly object: string;
  readonly action: BackendAction["kind"];
  readonly reason: string;
  readonly ms?: number;
  /** The job's cache key (what its native is filed under). */
  readonly key?: string;
}

export interface BuildReport {
  ok: boolean;
  error?: string;
  diagnostics?: string;
  frontend: { compiled: number; ms: number };
  thinlink: { ms: number; indexChanged: number };
  backend: { modules: number; compiled: number; cacheHits: number; unchanged: number; ms: number; jobs: JobRecord[] };
  link: { ms: number; skipped: boolean };
  ms: number;
  /** Where the time went: tools vs ktld's own work (src/profile.ts). */
  profile?: ProfileReport;
}

export function emptyReport(): BuildReport {
  return {
    ok: false,
    frontend: { compiled: 0, ms: 0 },
    thinlink: { ms: 0, indexChanged: 0 },
    backend: { modules: 0, compiled: 0, cacheHits: 0, unchanged: 0, ms: 0, jobs: [] },
    link: { ms: 0, skipped: false },
    ms: 0,
  };
}


export function kbuildLine(label: string, target: string, progress?: [number, number]): string {
  return `  ${label.padEnd(8)}${target}${progress ? ` [${progress[0]}/${progress[1]}]` : ""}`;
}

function statOf(file: string): ModuleRecord["nativeStat"] | undefined {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  return st ? { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino } : undefined;
}

function nativeState(file: string, rec: ModuleRecord | undefined, kbuildMade?: () => boolean): NativeState {
  const st = statOf(file);
  if (!st) return "missing";
  if (rec && st.size === rec.nativeStat.size && st.mtimeMs === rec.nativeStat.mtimeMs && st.ino === rec.nativeStat.ino) return "as-recorded";
  if (!rec && kbuildMade?.()) return "kbuild-current";
  return "modified";
}

function readImports(buildDir: string, object: string): string[] {
  try {
    return fs.readFileSync(path.join(buildDir, importsPath(object)), "utf8").split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

export interface BuildHooks {
  /** kbuild-style lines. */
  readonly log?: (line: string) => void;
  /** Phase and job events, for subscribers of the daemon. */
  readonly onEvent?: (e: DaemonEvent) => void;
  /** Aborted: running jobs are killed and the build ends with Cancelled. */
  readonly signal?: AbortSignal;
  readonly buildId?: number;
  /** Files that changed while the build ran (the daemon's pending events). */
  readonly changedMeanwhile?: () => Iterable<string>;
}

export class Build {
  readonly report: BuildReport;
  private readonly log: (line: string) => void;
  private readonly emit: (e: DaemonEvent) => void;

  constructor(
    private readonly tree: KbuildTree,
    private readonly tools: Toolchain,
    private readonly state: StateDir,
    private readonly store: Store,
    private readonly pool: JobPool,
    private readonly hooks: BuildHooks = {},
    report?: BuildReport,
    /** object → the files it `.incbin`s, if the caller keeps that up to date. */
    private readonly incbinOf?: ReadonlyMap<string, readonly string[]>,
    /** Kept across builds by the daemon: files whose stat did not change are not rehashed. */
    private readonly hashes: HashCache = new HashCache(tree.buildDir),
  ) {
    this.report = report ?? emptyReport();
    this.log = hooks.log ?? (() => {});
    this.emit = hooks.onEvent ?? (() => {});
  }

  private get id(): number {
    return this.hooks.buildId ?? 0;
  }

  private checkCancelled(): void {
    if (this.hooks.signal?.aborted) throw new Cancelled();
  }

  private async thinLink(): Promise<{ modules: readonly string[]; changed: ReadonlySet<string> }> {
    const t0 = performance.now();
    this.emit({ kind: "phase", build: this.id, phase: "thin-link", total: 1 });
    const stage = this.state.freshDir("stage");
    this.log(kbuildLine("LD", `vmlinux.thinlto-index (${this.tree.objects.length} objects)`));
    const argv = thinLinkArgv(this.tree, stage);
    const r = await runProcess(argv, { cwd: this.tree.buildDir, signal: this.hooks.signal, timeoutMs: 10 * 60_000, tool: "thin-link" });
    section("publish index files");
    if (r.cancelled) throw new Cancelled();
    if (r.error) throw new KtldError(r.error);
    if (r.timedOut) throw new BuildFailure("thin-link", r.output, "no result after 10 minutes");
    if (r.code !== 0) {
      const full = /No space left on device/.test(r.output) ? `no space left on the device of the state dir ${this.state.dir}; free some space or pass --state-dir DIR` : undefined;
      throw new BuildFailure("thin-link", r.output, full);
    }
    const outcome = publishIndexFiles(this.tree, stage, this.hashes);
    fs.rmSync(stage, { recursive: true, force: true });
    this.report.thinlink = { ms: Math.round(performance.now() - t0), indexChanged: outcome.changed.size };
    return outcome;
  }

  private inputsOf(object: string, hashes: HashCache, incbin: IncbinScanner): BackendInputs {
    const mod = this.tree.units.get(object)!;
    const bitcode = hashes.get(object);
    const index = hashes.get(indexPath(object));
    if (!bitcode || index === null) throw new KtldError(`${object}: bitcode or index file vanished during the build; run ktld build again`);
    const imports: Record<string, Hash> = {};
    for (const imp of readImports(this.tree.buildDir, object)) {
      const rel = path.relative(this.tree.buildDir, path.resolve(this.tree.buildDir, imp));
      imports[rel] = hashes.get(rel) ?? "<missing>";
    }
    const inc: Record<string, Hash | null> = {};
    // The caller's map, when given, is complete: a unit it does not name has no .incbin.
    for (const f of this.incbinOf ? (this.incbinOf.get(object) ?? []) : incbin.filesOf(mod.cmd.source, mod.cmd.deps)) inc[f] = hashes.get(f);
    return {
      object, bitcode, index, imports, incbin: inc, cwd: this.tree.buildDir, clang: this.tools.clangIdentity,
      argv: backendArgv(mod.compiler, mod.backendFlags, object),
    };
  }

  private warnedNoRoom = false;
  /** Store writes started without waiting (restores): awaited before the BE phase ends, so
   * a failed one fails this build instead of rejecting unhandled. */
  private writes: Promise<void>[] = [];

  /** A write to the store or the cache that found no room (a full disk, a full LMDB map):
   * said once per build, and the build goes on; what was not written is redone later. */
  private noRoom(e?: unknown): void {
    const code = (e as NodeJS.ErrnoException | undefined)?.code ?? "";
    const msg = (e as Error | undefined)?.message ?? "";
    if (e !== undefined && !NO_ROOM.has(code) && !/MDB_MAP_FULL|No space left|ENOSPC|read-only/i.test(msg)) throw e;
    if (this.warnedNoRoom) return;
    this.warnedNoRoom = true;
    this.log(`ktld: no room in the state dir ${this.state.dir} (${code || msg || "ENOSPC"}); natives are not being cached: free some space or pass --state-dir DIR`);
  }

  /** Runs a store write, if the store has room; no room is a warning, not a failed build. */
  private async stored(write: () => Promise<unknown>): Promise<void> {
    if (!this.store.roomy()) return this.noRoom();
    try {
      await write();
    } catch (e) {
      this.noRoom(e);
    }
  }

  private recordModule(inp: BackendInputs, key: Hash, native: Hash, ms?: number): Promise<void> {
    const stat = statOf(path.join(this.tree.buildDir, nativePath(inp.object)))!;
    const rec: ModuleRecord = {
      key, bitcode: inp.bitcode, index: inp.index, imports: inp.imports, argv: argvHash(inp.argv),
      clang: inp.clang, incbin: inp.incbin, native, nativeStat: stat,
      ms: ms ?? this.store.modules.get(inp.object)?.ms,
    };
    return this.stored(() => this.store.modules.put(inp.object, rec));
  }

  /** Puts a native into the cache: its bytes into the blob dir, its entry into the store. */
  private cacheNative(key: Hash, object: string, file: string, native: Hash, size: number): Promise<void> {
    if (!this.state.blobs.put(file, native)) {
      this.noRoom();
      return Promise.resolve();
    }
    const entry: CacheEntry = { native, size, object, lastUsed: Date.now() };
    this.state.blobs.putKey(key, entry);
    return this.stored(() => this.store.cache.put(key, entry));
  }

  /** Brings a cached native into place. False if the blob is gone or corrupt (then the
   * entry is dropped and the caller compiles). */
  private restore(inp: BackendInputs, action: Extract<BackendAction, { kind: "restore" }>): boolean {
    const dest = path.join(this.tree.buildDir, nativePath(inp.object));
    // A native already on disk with the right bytes is not even rewritten.
    if (hashFile(dest) !== action.entry.native && !this.state.blobs.restore(action.entry.native, dest)) {
      this.log(`ktld: cached native for ${inp.object} is missing or corrupt; dropped it, compiling instead`);
      this.writes.push(this.stored(() => this.store.cache.remove(action.key)));
      this.state.blobs.removeKey(action.key);
      return false;
    }
    this.writes.push(this.stored(() => this.store.cache.put(action.key, { ...action.entry, lastUsed: Date.now() })));
    this.writes.push(this.recordModule(inp, action.key, action.entry.native));
    return true;
  }

  /** Takes kbuild's native as ktld's own: recorded, and cached like a compiled one.
   * False if it is not a whole ELF object (then it is compiled). */
  private async adopt(inp: BackendInputs, key: Hash): Promise<boolean> {
    const file = path.join(this.tree.buildDir, nativePath(inp.object));
    const bytes = fs.readFileSync(file);
    if (!isWholeElf64(bytes)) return false;
    const hash = hashFile(file)!;
    await this.cacheNative(key, inp.object, file, hash, bytes.length);
    await this.recordModule(inp, key, hash);
    return true;
  }

  private async compileAll(jobs: { inp: BackendInputs; key: Hash; reason: string }[]): Promise<void> {
    const dir = this.tree.buildDir;
    let done = 0;
    const failures: string[] = [];
    await Promise.all(jobs.map(async ({ inp, key, reason }) => {
      const native = nativePath(inp.object);
      const tmp = `${native}.ktld-tmp`;
      const mod = this.tree.units.get(inp.object)!;
      const argv = backendArgv(mod.compiler, mod.backendFlags, inp.object, tmp);
      if (this.hooks.signal?.aborted) return;
      this.emit({ kind: "job-start", build: this.id, phase: "BE", object: inp.object, reason });
      const res = await this.pool.run({ argv, cwd: dir, output: path.join(dir, tmp), checkElf: true }, this.hooks.signal, "BE compile");
      this.emit({ kind: "job-end", build: this.id, phase: "BE", object: inp.object, ok: res.code === 0, ms: Math.round(res.ms) });
      if (this.hooks.signal?.aborted) {
        fs.rmSync(path.join(dir, tmp), { force: true });
        return;
      }
      done++;
      this.log(kbuildLine("LTO", inp.object, [done, jobs.length]));
      this.report.backend.jobs.push({ object: inp.object, action: "compile", reason, ms: Math.round(res.ms), key });
      const tmpAbs = path.join(dir, tmp);
      // The worker already refused an output that is not a whole ELF object (res.error).
      const bad = res.error ?? (res.code !== 0 ? `exit ${res.code ?? res.signal}` : undefined) ?? (res.outputHash ? undefined : "wrote nothing");
      if (bad) {
        fs.rmSync(tmpAbs, { force: true });
        failures.push(`${inp.object}: BE compile failed (${bad})\n${res.diagnostics}`);
        return;
      }
      // The inputs must still be what the key was made of: a file changed during the
      // compile would put a native under a key it was not made from.
      if (hashFile(path.join(dir, inp.object)) !== inp.bitcode || hashFile(path.join(dir, indexPath(inp.object))) !== inp.index) {
        fs.rmSync(tmpAbs, { force: true });
        failures.push(`${inp.object}: inputs changed during the BE compile; run the build again`);
        return;
      }
      await this.cacheNative(key, inp.object, tmpAbs, res.outputHash!, res.outputSize!);
      fs.renameSync(tmpAbs, path.join(dir, native));
      this.tree.layout.recordNative(this.tree, mod);
      await this.recordModule(inp, key, res.outputHash!, Math.round(res.ms));
      if (res.diagnostics.trim()) this.log(res.diagnostics.trimEnd());
    }));
    this.checkCancelled();
    if (failures.length) throw new BuildFailure("BE", failures.join("\n"));
  }

  private async backend(modules: readonly string[]): Promise<void> {
    const t0 = performance.now();
    const hashes = this.hashes;
    const incbin = new IncbinScanner(this.tree.buildDir, this.tree.srcTree);
    const compiles: { inp: BackendInputs; key: Hash; reason: string }[] = [];
    const be = this.report.backend;
    be.modules = modules.length;
    section("BE plan");
    for (const object of modules) {
      const inp = this.inputsOf(object, hashes, incbin);
      const rec = this.store.modules.get(object);
      const kbuildMade = () => this.tree.layout.madeByKbuild(this.tree, object);
      const action = planBackend(inp, rec, nativeState(path.join(this.tree.buildDir, nativePath(object)), rec, kbuildMade), (k) => {
        const e = this.store.cache.get(k) ?? this.state.blobs.entryFor(k);
        return e && this.state.blobs.has(e.native) ? e : undefined;
      });
      if (action.kind === "unchanged") {
        be.unchanged++;
      } else if (action.kind === "adopt" && (await this.adopt(inp, action.key))) {
        be.unchanged++;
      } else if (action.kind === "restore" && this.restore(inp, action)) {
        be.cacheHits++;
        be.jobs.push({ object, action: "restore", reason: action.reason, key: action.key });
        this.log(kbuildLine("CACHED", object));
      } else {
        const reason = action.kind === "restore" ? "cached native corrupt" : action.kind === "adopt" ? "kbuild's native is not a whole ELF object" : action.reason;
        compiles.push({ inp, key: action.key, reason });
      }
    }
    be.compiled = compiles.length;
    // Longest first (by the last compile of each module): the pool then ends together.
    compiles.sort((a, b) => (this.store.modules.get(b.inp.object)?.ms ?? 1e9) - (this.store.modules.get(a.inp.object)?.ms ?? 1e9));
    this.emit({ kind: "phase", build: this.id, phase: "BE", total: compiles.length });
    section("BE");
    await this.compileAll(compiles);
    section("store writes");
    await Promise.all(this.writes.splice(0));
    await this.stored(() => this.store.flush());
    be.ms = Math.round(performance.now() - t0);
  }

  private async link(modules: readonly string[], prefetched?: Promise<ReadonlyMap<string, string>>): Promise<void> {
    const t0 = performance.now();
    section("link key");
    const inputs = nativeInputs(this.tree.objects, new Set(modules));
    const argv = vmlinuxOArgv(this.tree, inputs);
    const hashes = this.hashes;
    const key = hashFields([...argv, ...inputs.map((o) => hashes.get(o.path) ?? "<missing>"), this.tree.vmlinuxLink.after]);
    const vmlinux = path.join(this.tree.buildDir, "vmlinux");
    const last = this.store.getMeta("link");
    if (last && last.key === key && hashes.get("vmlinux") === last.vmlinux) {
      this.report.link = { ms: Math.round(performance.now() - t0), skipped: true };
      return;
    }
    this.emit({ kind: "phase", build: this.id, phase: "link", total: 1 });
    section("kbuild env");
    const env = await kbuildEnv(this.tree.buildDir, this.tree.makeVars, this.state.dir);
    section("link");
    const objectHashes = new Map<string, Hash>();
    // What kbuild's initcall generator reads: vmlinux.a's members (natives in dist mode).
    for (const o of this.tree.layout.initcallObjects(this.tree, inputs)) objectHashes.set(o.path, hashes.get(o.path) ?? "<missing>");
    const rec = await linkVmlinux(this.tree, inputs, env, (label, target) => this.log(kbuildLine(label, target)),
      objectHashes, this.store.getMeta("initcalls"), prefetched);
    this.writes.push(this.stored(() => this.store.putMeta("initcalls", rec)));
    this.writes.push(this.stored(() => this.store.putMeta("link", { key, vmlinux: hashFile(vmlinux) })));
    this.report.link = { ms: Math.round(performance.now() - t0), skipped: false };
  }

  /** What the thin-link reads: every object of the link, by content, in order. */
  private thinLinkKey(hashes: HashCache): Hash {
    return hashFields([...thinLinkArgv(this.tree, "<stage>"), ...this.tree.objects.map((o) => `${o.path}\0${hashes.get(o.path) ?? "<missing>"}`)]);
  }

  /** The thin-link's outputs as they are now: each module's index and imports bytes. */
  private thinLinkOutputs(modules: readonly string[]): Hash {
    return hashFields(modules.flatMap((m) => [m, this.hashes.get(indexPath(m)) ?? "<missing>", this.hashes.get(importsPath(m)) ?? "<missing>"]));
  }

  /** Thin-link (only if some object changed since the last one, or its outputs were
   * touched by someone else), BE, link. */
  async run(): Promise<BuildReport> {
    const t0 = performance.now();
    const last = this.store.getMeta("thinlink");
    section("archives");
    // kbuild's archives are remade beside the thin-link and the BE (which read the objects,
    // not the archives), and awaited before the link, whose kbuild steps read them.
    const archives = this.tree.layout.remakeArchives(this.tree, () => kbuildEnv(this.tree.buildDir, this.tree.makeVars, this.state.dir))
      .then((made) => { for (const a of made) this.log(kbuildLine("AR", a)); });
    // A first link (no initcall record yet): the objects' initcall symbols, which kbuild's
    // generator orders by, are read beside the BE instead of after it.
    const initcalls = this.store.getMeta("initcalls") === undefined && this.tree.layout.initcallsBeforeBackend
      ? initcallSignatures(this.tree.buildDir, this.tools.nm, this.tree.layout.initcallObjects(this.tree, []).map((o) => o.path), undefined, this.hooks.signal)
      : undefined;
    initcalls?.catch(() => undefined); // awaited by the link, if it comes to that
    let modules: readonly string[];
    let failed = false;
    try {
      section("thin-link key");
      this.hashes.newEpoch();
      const key = this.thinLinkKey(this.hashes);
      const current = last !== undefined && last.key === key && last.outputs === this.thinLinkOutputs(last.modules);
      modules = current ? last.modules : (await this.thinLink()).modules;
      // The thin-link rewrote index files hashed above: look at them afresh.
      section("thin-link record");
      if (!current) this.hashes.newEpoch();
      if (!current) await this.stored(() => this.store.putMeta("thinlink", { key, modules, outputs: this.thinLinkOutputs(modules) }));
      this.checkCancelled();
      await this.backend(modules);
      this.checkCancelled();
    } catch (e) {
      failed = true;
      throw e;
    } finally {
      section("archives");
      // Never left running (or rejecting unhandled) after the build ends; its own failure
      // is the build's when nothing failed before it.
      await archives.catch((e: unknown) => (failed ? undefined : Promise.reject(e)));
    }
    await this.link(modules, initcalls);
    section("settle mtimes");
    this.tree.layout.settle(this.tree, modules);
    section("store writes");
    await Promise.all(this.writes.splice(0));
    await this.stored(() => this.store.flush());
    this.report.ok = true;
    this.report.ms += Math.round(performance.now() - t0);
    return this.report;
  }
}

/** Evicts least-recently-used cache entries until the blobs fit under `cap` bytes. */
export async function collectGarbage(store: Store, blobs: BlobDir, cap: number): Promise<{ evicted: number; bytes: number }> {
  // Under the cap (the usual case): nothing to read.
  if (blobs.usage().bytes <= cap) return { evicted: 0, bytes: blobs.usage().bytes };
  const entries = [...store.cache.getRange()].map(({ key, value }) => ({ key: key as string, value: value as CacheEntry }));
  const inUse = new Set<string>([...store.modules.getRange()].map(({ value }) => (value as ModuleRecord).native));
  let total = blobs.usage().bytes;
  let evicted = 0;
  const refs = new Map<string, number>();
  for (const e of entries) refs.set(e.value.native, (refs.get(e.value.native) ?? 0) + 1);
  entries.sort((a, b) => a.value.lastUsed - b.value.lastUsed);
  for (const { key, value } of entries) {
    if (total <= cap) break;
    await store.cache.remove(key);
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

/** The one-shot `ktld build`: import, check, build, report. */
export async function buildOnce(opts: BuildOptions): Promise<BuildReport> {
  const t0 = performance.now();
  const profile = startProfile();
  const tree = importTree(opts.buildDir);
  checkWritable(tree);
  const tools = resolveToolchain(tree, opts.buildDir);
  const state = await StateDir.open(path.resolve(opts.stateDir ?? path.join(tree.buildDir, ".ktld")));
  const store = Store.open({ path: state.storePath, log: opts.log });
  const pool = new JobPool(opts.jobs ?? os.cpus().length);
  const b = new Build(tree, tools, state, store, pool, { log: opts.log });
  try {
    const report = await b.run();
    // Only new natives can push the cache over its cap.
    section("GC");
    if (report.backend.compiled > 0 && store.roomy()) await collectGarbage(store, state.blobs, opts.cacheCap ?? DEFAULT_CACHE_CAP);
    report.ms = Math.round(performance.now() - t0);
    report.profile = endProfile(profile);
    return report;
  } catch (e) {
    if (!(e instanceof BuildFailure)) throw e;
    const report = b.report;
    report.ok = false;
    report.error = e.message;
    report.diagnostics = e.diagnostics;
    report.ms = Math.round(performance.now() - t0);
    return report;
  } finally {
    await pool.close();
    await store.close();
    state.release();
  }
}
