// The BE phase of a link target (vmlinux, or one kernel module): for each bitcode unit the
// thin-link loaded, decide by its inputs (src/backend.ts, pure) whether its native is current,
// can come from the cache, or must be compiled, and do it on the pool. Its records go through
// the build's one store writer (src/context.ts).
import * as fs from "node:fs";
import * as path from "node:path";
import { BackendAction, BackendInputs, argvHash, backendArgv, planBackend, NativeState, sharedBackendKey } from "./backend";
import { eachLimited } from "./base/limit";
import { importsPath, indexPath, nativePath, TEMP_SUFFIX } from "./kbuild/names";
import { BuildFailure, KtldError } from "./base/errors";
import { section } from "./base/profile";
import type { BuildContext } from "./context";
import { Hash, HashCache, hashBytes, hashFile, isWholeElf64 } from "./base/hash";
import { dtltoBatch } from "./executor";
import { runProcess } from "./base/process";
import { quote } from "./base/shell";
import type { JobResult } from "./worker";
import { IncbinScanner } from "./incbin";
import type { BitcodeUnit, KbuildTree } from "./kbuild/tree";
import { NativeCache } from "./cache";
import { UnitRecord, Store } from "./store";
import { killPoint } from "./base/killpoint";

export interface JobRecord {
  readonly object: string;
  readonly action: BackendAction["kind"];
  readonly reason: string;
  readonly ms?: number;
  /** The job's cache key (what its native is filed under). */
  readonly key?: string;
}

/** What a BE phase did. `modules` (the units it planned) is the name of one more release. */
export interface BackendReport {
  modules: number; compiled: number;
  /** Natives restored from a cache: the local one's and the shared one's (`sharedHits` of them). */
  cacheHits: number; sharedHits: number;
  unchanged: number; ms: number; jobs: JobRecord[];
}

export function emptyBackendReport(): BackendReport {
  return { modules: 0, compiled: 0, cacheHits: 0, sharedHits: 0, unchanged: 0, ms: 0, jobs: [] };
}

export function kbuildLine(label: string, target: string, progress?: [number, number]): string {
  return `  ${label.padEnd(8)}${target}${progress ? ` [${progress[0]}/${progress[1]}]` : ""}`;
}

export function statOf(file: string): UnitRecord["nativeStat"] | undefined {
  const st = fs.statSync(file, { throwIfNoEntry: false });
  return st ? { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino } : undefined;
}

function nativeState(file: string, rec: UnitRecord | undefined, kbuildMade?: () => boolean): NativeState {
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

/** The BE argv of a unit, one array per unit node and its flags (a re-import of the tree
 * makes new nodes): the same array every build, so its hash is remembered (argvHash). */
const argvs = new WeakMap<object, { flags: readonly string[]; compiler: string; argv: readonly string[] }>();
function argvOf(mod: { readonly compiler: string; readonly backendFlags: readonly string[] }, object: string): readonly string[] {
  const known = argvs.get(mod);
  if (known && known.flags === mod.backendFlags && known.compiler === mod.compiler) return known.argv;
  const argv = backendArgv(mod.compiler, mod.backendFlags, object);
  argvs.set(mod, { flags: mod.backendFlags, compiler: mod.compiler, argv });
  return argv;
}

/** A unit's native to make: its inputs, its key, and why. */
interface CompileJob { readonly inp: BackendInputs; readonly key: Hash; readonly reason: string }

export class BackendPhase {
  private readonly cache: NativeCache;
  private readonly tree: KbuildTree;

  constructor(
    private readonly ctx: BuildContext,
    /** The units this phase may be asked about, by their bitcode's path. */
    private readonly units: ReadonlyMap<string, BitcodeUnit>,
  ) {
    this.tree = ctx.tree;
    this.cache = new NativeCache(ctx.store, ctx.state.blobs);
  }

  private get store(): Store {
    return this.ctx.store;
  }

  private inputsOf(object: string, hashes: HashCache, incbin: IncbinScanner): BackendInputs {
    const mod = this.units.get(object)!;
    const bitcode = hashes.get(object);
    const index = hashes.get(indexPath(object));
    if (!bitcode || index === null) throw new KtldError(`${object}: bitcode or index file vanished during the build; run ktld build again`);
    const imports: Record<string, Hash> = {};
    for (const imp of readImports(this.tree.buildDir, object)) {
      const rel = path.relative(this.tree.buildDir, path.resolve(this.tree.buildDir, imp));
      imports[rel] = hashes.get(rel) ?? "<missing>";
    }
    const inc: Record<string, Hash | null> = {};
    // The caller's map (the session's, kept up to date by its FE) names every unit it
    // scanned, an empty list for none; a unit it does not name is scanned here.
    for (const f of this.ctx.incbinOf?.get(object) ?? incbin.filesOf(mod.cmd.source, mod.cmd.deps)) inc[f] = hashes.get(f);
    return {
      object, bitcode, index, imports, incbin: inc, cwd: this.tree.buildDir, clang: this.ctx.tools.clangIdentity,
      argv: argvOf(mod, object),
    };
  }

  private recordModule(inp: BackendInputs, key: Hash, native: Hash, ms?: number): Promise<boolean> {
    const stat = statOf(path.join(this.tree.buildDir, nativePath(inp.object)))!;
    const rec: UnitRecord = {
      key, bitcode: inp.bitcode, index: inp.index, imports: inp.imports, argv: argvHash(inp.argv),
      clang: inp.clang, incbin: inp.incbin, native, nativeStat: stat,
      ms: ms ?? this.store.unit(inp.object)?.ms,
    };
    return this.ctx.writer.write(() => this.store.putUnit(inp.object, rec));
  }

  /** Puts a native into the cache: its bytes into the blob dir, its entry into the store. */
  private cacheNative(key: Hash, object: string, file: string, native: Hash, size: number): Promise<void> {
    const { stored, written } = this.cache.put(key, object, file, native, size, (w) => this.ctx.writer.write(w));
    if (!stored) this.ctx.writer.noRoom();
    return written;
  }

  /** Brings a cached native into place: "restored", or "in place" when the native on disk
   * already has the cached native's bytes (a store lost or a record missing: only the record
   * is written, no job). False if the blob is gone or corrupt (then the entry is dropped and
   * the caller compiles). */
  private restore(inp: BackendInputs, action: Extract<BackendAction, { kind: "restore" }>): "restored" | "in place" | false {
    const dest = path.join(this.tree.buildDir, nativePath(inp.object));
    const destHash = hashFile(dest);
    const { restored, written } = this.cache.restore(action.key, action.entry, dest, destHash, (w) => this.ctx.writer.write(w));
    this.ctx.writer.track(written);
    if (!restored) {
      this.ctx.log(`ktld: cached native for ${inp.object} is missing or corrupt; dropped it, compiling instead`);
      return false;
    }
    this.ctx.writer.track(this.recordModule(inp, action.key, action.entry.native).then(() => undefined));
    return destHash === action.entry.native ? "in place" : "restored";
  }

  /** A native on disk that is what `key` made by the cache's own note, although the cache lost
   * the blob (a store and a blob lost together): recorded as it is, and cached again from
   * itself, with no job. */
  private async inPlaceByNote(inp: BackendInputs, key: Hash): Promise<boolean> {
    const noted = this.cache.noted(key);
    const file = path.join(this.tree.buildDir, nativePath(inp.object));
    if (!noted || hashFile(file) !== noted.native) return false;
    await this.cacheNative(key, inp.object, file, noted.native, fs.statSync(file).size);
    await this.recordModule(inp, key, noted.native);
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

  /** A unit's BE compile: its argv, writing to the temp name that is renamed into place. */
  private compileCommand(object: string): { argv: string[]; tmp: string } {
    const mod = this.units.get(object)!;
    const tmp = `${nativePath(object)}${TEMP_SUFFIX}`;
    return { argv: backendArgv(mod.compiler, mod.backendFlags, object, tmp), tmp };
  }

  /** Hands `jobs` to the `--be-executor` as one DTLTO batch; returns the result of each job
   * whose native it wrote whole (the others are compiled here by the caller). */
  private async execute(jobs: readonly CompileJob[], executor: string): Promise<Map<string, JobResult>> {
    const dir = this.tree.buildDir;
    const specs = jobs.map(({ inp }) => {
      const { argv, tmp } = this.compileCommand(inp.object);
      return {
        argv, object: inp.object, output: tmp,
        imports: Object.keys(inp.imports), incbin: Object.entries(inp.incbin).filter(([, h]) => h).map(([f]) => f),
      };
    });
    const out = new Map<string, JobResult>();
    if (!specs.length) return out;
    const batchFile = path.join(this.ctx.state.dir, "be-batch.json");
    fs.writeFileSync(batchFile, JSON.stringify(dtltoBatch(specs, `${specs.length} BE jobs of ktld`), null, 1));
    this.ctx.log(`[BE] ${specs.length} jobs to the executor: ${executor} ${batchFile}`);
    const r = await runProcess(["/bin/sh", "-c", `${executor} ${quote(batchFile)}`], { cwd: dir, signal: this.ctx.signal, timeoutMs: 3 * 3600_000, tool: "BE executor" });
    if (r.code !== 0) this.ctx.log(`[BE] the executor ${r.error ?? `exited ${r.code ?? r.signal}`}: ${r.output.trim().split("\n").slice(-3).join(" | ")}`);
    for (const s of specs) {
      let bytes: Buffer;
      try {
        bytes = fs.readFileSync(path.join(dir, s.output));
      } catch {
        continue;
      }
      if (!isWholeElf64(bytes)) continue;
      out.set(s.object, { code: 0, signal: null, diagnostics: "", ms: r.ms / specs.length, outputHash: hashBytes(bytes), outputSize: bytes.length });
    }
    this.ctx.log(`[BE] the executor returned ${out.size} of ${specs.length} natives whole${out.size < specs.length ? "; the rest are compiled here" : ""}`);
    return out;
  }

  private async compileAll(jobs: CompileJob[], be: BackendReport): Promise<void> {
    const dir = this.tree.buildDir;
    let done = 0;
    const failures: string[] = [];
    const executor = this.ctx.beExecutor;
    const executed = executor && !this.ctx.signal?.aborted ? await this.execute(jobs, executor) : undefined;
    await Promise.all(jobs.map(async (job) => {
      const { inp, key } = job;
      const native = nativePath(inp.object);
      const mod = this.units.get(inp.object)!;
      const { argv, tmp } = this.compileCommand(inp.object);
      if (this.ctx.signal?.aborted) return;
      const byExecutor = executed?.get(inp.object);
      const reason = executed ? `${job.reason}${byExecutor ? " (by the executor)" : " (compiled here: the executor returned no whole native)"}` : job.reason;
      this.ctx.emit({ kind: "job-start", build: this.ctx.id, phase: "BE", object: inp.object, reason });
      const res = byExecutor ?? await this.ctx.pool.run({ argv, cwd: dir, output: path.join(dir, tmp), checkElf: true }, this.ctx.signal, "BE compile");
      this.ctx.emit({ kind: "job-end", build: this.ctx.id, phase: "BE", object: inp.object, ok: res.code === 0, ms: Math.round(res.ms) });
      if (this.ctx.signal?.aborted) {
        fs.rmSync(path.join(dir, tmp), { force: true });
        return;
      }
      done++;
      this.ctx.log(kbuildLine("LTO", inp.object, [done, jobs.length]));
      be.jobs.push({ object: inp.object, action: "compile", reason, ms: Math.round(res.ms), key });
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
      killPoint("native:tree-write");
      fs.renameSync(tmpAbs, path.join(dir, native));
      killPoint("native:before-record");
      this.tree.layout.recordNative(this.tree, mod);
      await this.recordModule(inp, key, res.outputHash!, Math.round(res.ms));
      if (res.diagnostics.trim()) this.ctx.log(res.diagnostics.trimEnd());
    }));
    this.ctx.checkCancelled();
    if (failures.length) throw new BuildFailure("BE", failures.join("\n"));
  }

  /** The natives of `jobs` that the shared cache has (checked there), put in place and
   * cached here as a compile's would be; returns the jobs left to compile, in their order. */
  private async fromShared(jobs: readonly CompileJob[], be: BackendReport): Promise<CompileJob[]> {
    const shared = this.ctx.shared!;
    const dir = this.tree.buildDir;
    const got = new Set<CompileJob>();
    await eachLimited(jobs, 8, async (job) => {
      const key = sharedBackendKey(job.inp, this.ctx.tools.clangPortable);
      const entry = key && !this.ctx.signal?.aborted ? await shared.get(key, job.inp.object) : undefined;
      if (!entry || this.ctx.signal?.aborted) return;
      const object = job.inp.object;
      const native = nativePath(object);
      const tmp = path.join(dir, `${native}${TEMP_SUFFIX}`);
      fs.writeFileSync(tmp, entry.bytes);
      await this.cacheNative(job.key, object, tmp, entry.hash, entry.bytes.length);
      fs.renameSync(tmp, path.join(dir, native));
      this.tree.layout.recordNative(this.tree, this.units.get(object)!);
      await this.recordModule(job.inp, job.key, entry.hash);
      got.add(job);
      be.cacheHits++;
      be.sharedHits++;
      be.jobs.push({ object, action: "restore", reason: `shared cache hit (${job.reason})`, key: job.key });
      this.ctx.log(kbuildLine("SHARED", object));
    });
    return jobs.filter((j) => !got.has(j));
  }

  /** Stores the natives this phase compiled in the shared cache (write mode). */
  private async toShared(jobs: readonly CompileJob[]): Promise<void> {
    const shared = this.ctx.shared!;
    await eachLimited(jobs, 4, async (job) => {
      const key = sharedBackendKey(job.inp, this.ctx.tools.clangPortable);
      const rec = this.store.unit(job.inp.object);
      if (!key || rec?.key !== job.key || this.ctx.signal?.aborted) return;
      const bytes = fs.readFileSync(path.join(this.tree.buildDir, nativePath(job.inp.object)));
      await shared.put(key, bytes, rec.native);
    });
  }

  /** The BE of `units` (in link order): each unchanged, restored from the cache, or compiled. */
  async run(modules: readonly string[], be: BackendReport): Promise<void> {
    const t0 = performance.now();
    const hashes = this.ctx.hashes;
    const incbin = new IncbinScanner(this.tree.buildDir, this.tree.srcTree);
    const compiles: CompileJob[] = [];
    be.modules = modules.length;
    section("BE plan");
    let restored: ReturnType<BackendPhase["restore"]>;
    for (const object of modules) {
      const inp = this.inputsOf(object, hashes, incbin);
      const rec = this.store.unit(object);
      const kbuildMade = () => this.tree.layout.madeByKbuild(this.tree, object);
      const action = planBackend(inp, rec, nativeState(path.join(this.tree.buildDir, nativePath(object)), rec, kbuildMade), (k) => this.cache.lookup(k));
      if (action.kind === "unchanged") {
        be.unchanged++;
      } else if (action.kind === "adopt" && (await this.adopt(inp, action.key))) {
        be.unchanged++;
      } else if (action.kind === "restore" && (restored = this.restore(inp, action))) {
        if (restored === "in place") {
          be.unchanged++;
        } else {
          be.cacheHits++;
          be.jobs.push({ object, action: "restore", reason: action.reason, key: action.key });
          this.ctx.log(kbuildLine("CACHED", object));
        }
      } else if (action.kind === "compile" && (await this.inPlaceByNote(inp, action.key))) {
        be.unchanged++;
      } else {
        const reason = action.kind === "restore" ? "cached native corrupt" : action.kind === "adopt" ? "kbuild's native is not a whole ELF object" : action.reason;
        compiles.push({ inp, key: action.key, reason });
      }
    }
    if (this.ctx.shared && compiles.length) {
      section("shared cache");
      compiles.splice(0, compiles.length, ...await this.fromShared(compiles, be));
    }
    be.compiled = compiles.length;
    // Longest first (by the last compile of each module): the pool then ends together.
    compiles.sort((a, b) => (this.store.unit(b.inp.object)?.ms ?? 1e9) - (this.store.unit(a.inp.object)?.ms ?? 1e9));
    this.ctx.emit({ kind: "phase", build: this.ctx.id, phase: "BE", total: compiles.length });
    section("BE");
    await this.compileAll(compiles, be);
    if (this.ctx.shared?.config.write && compiles.length) {
      section("shared cache");
      await this.toShared(compiles);
    }
    section("store writes");
    if (be.cacheHits) {
      const hits = this.store.getMeta("hits") ?? { local: 0, shared: 0 };
      const now = { local: hits.local + be.cacheHits - be.sharedHits, shared: hits.shared + be.sharedHits };
      this.ctx.writer.track(this.ctx.writer.write(() => this.store.putMeta("hits", now)).then(() => undefined));
    }
    await this.ctx.writer.settle();
    await this.ctx.writer.write(() => this.store.flush());
    be.ms = Math.round(performance.now() - t0);
  }
}
