// One build of vmlinux's LTO link: thin-link, the BE jobs whose inputs changed, link.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { BackendPhase, BackendReport, emptyBackendReport, JobRecord, kbuildLine } from "./backendphase";
import { DEFAULT_CACHE_CAP } from "./blobs";
import { NativeCache } from "./cache";
import { BuildFailure, Cancelled, KtldError } from "./errors";
import { runProcess } from "./process";
import { endProfile, ProfileReport, section, startProfile } from "./profile";
import type { DaemonEvent } from "./protocol";
import { Hash, HashCache } from "./hash";
import { kbuildEnv } from "./kbuild/env";
import { checkWritable, importTree, KbuildTree } from "./kbuild/tree";
import { initcallSignatures, linkVmlinux, nativeInputs, vmlinuxOArgv } from "./link";
import { buildKernelModules, KernelModuleReport, ModulesFinalReport } from "./modulebuild";
import { JobPool } from "./pool";
import { fileStat, sameStat, Store } from "./store";
import { StateDir } from "./state";
import { linkKey, planLink, planThinLink, thinLinkKey, thinLinkOutputs } from "./steps";
import { publishIndexFiles, thinLinkArgv } from "./thinlink";
import { resolveToolchain, Toolchain } from "./toolchain";

export { JobRecord, kbuildLine };

export interface BuildOptions {
  readonly buildDir: string;
  readonly stateDir?: string;
  readonly jobs?: number;
  /** kbuild-style progress lines (`  LTO     kernel/fork.o [3/12]`). */
  readonly log?: (line: string) => void;
  /** Cache size cap in bytes (LRU eviction after each build). */
  readonly cacheCap?: number;
  /** Install the kernel modules there (`make modules_install INSTALL_MOD_PATH=`). */
  readonly installModPath?: string;
}

export interface BuildReport {
  ok: boolean;
  error?: string;
  diagnostics?: string;
  frontend: { compiled: number; ms: number };
  /** `reason`: why it ran, or why it did not (src/steps.ts). */
  /** `skipped`: the plan kept the last thin-link's index files (its inputs had not changed). */
  thinlink: { ms: number; indexChanged: number; reason?: string; skipped?: boolean };
  backend: BackendReport;
  link: { ms: number; skipped: boolean; reason?: string };
  ms: number;
  /** From the build's start until `vmlinux` was whole and fresh (set when it was relinked):
   * in a tree with modules, kbuild's modpost and module link still follow. */
  vmlinuxReadyMs?: number;
  /** Where the time went: tools vs ktld's own work (src/profile.ts). */
  profile?: ProfileReport;
  /** The kernel modules this build made something of (src/modulebuild.ts). */
  kernelModules?: KernelModuleReport[];
  /** kbuild's modpost and final module link, if they ran. */
  modulesFinal?: ModulesFinalReport;
}

export function emptyReport(): BuildReport {
  return {
    ok: false,
    frontend: { compiled: 0, ms: 0 },
    thinlink: { ms: 0, indexChanged: 0 },
    backend: emptyBackendReport(),
    link: { ms: 0, skipped: false },
    ms: 0,
  };
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
  /** vmlinux was relinked and is whole: called before the build's bookkeeping (the mtimes
   * make compares, the store's records). */
  readonly onVmlinuxFresh?: () => void;
  /** The build is about to overwrite what a boot of the current kernel reads: vmlinux
   * (its link starts) or the `.ko` files (kbuild's final module link starts). Called at
   * that moment, never for a build that ends with the old files in place. */
  readonly onReplacing?: (what: Replaced) => void;
}

/** What a build writes that a boot of the kernel reads. */
export type Replaced = "vmlinux" | "modules";

export class Build {
  readonly report: BuildReport;
  private readonly log: (line: string) => void;
  private readonly emit: (e: DaemonEvent) => void;

  constructor(
    private readonly tree: KbuildTree,
    private readonly tools: Toolchain,
    private readonly state: StateDir,
    private readonly store: Store,
    pool: JobPool,
    private readonly hooks: BuildHooks = {},
    report?: BuildReport,
    /** object → the files it `.incbin`s, if the caller keeps that up to date. */
    incbinOf?: ReadonlyMap<string, readonly string[]>,
    /** Kept across builds by the daemon: files whose stat did not change are not rehashed. */
    private readonly hashes: HashCache = new HashCache(tree.buildDir),
  ) {
    this.report = report ?? emptyReport();
    this.log = hooks.log ?? (() => {});
    this.emit = hooks.onEvent ?? (() => {});
    this.phase = new BackendPhase(tree, tree.units, tools, state, store, pool,
      { log: this.log, emit: this.emit, signal: hooks.signal, buildId: hooks.buildId ?? 0 }, incbinOf, hashes);
  }

  /** The BE phase, and the one writer of the store during this build. */
  private readonly phase: BackendPhase;

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

  /** Returns the key of the link it ran (undefined: vmlinux was current). */
  private async link(modules: readonly string[], prefetched?: Promise<ReadonlyMap<string, string>>): Promise<Hash | undefined> {
    const t0 = performance.now();
    section("link key");
    const inputs = nativeInputs(this.tree.objects, new Set(modules));
    const argv = vmlinuxOArgv(this.tree, inputs);
    const hashes = this.hashes;
    const key = linkKey(argv, inputs.map((o) => o.path), this.tree.vmlinuxLink.after, (f) => hashes.get(f));
    const last = this.store.getMeta("link");
    const now = fileStat(path.join(this.tree.buildDir, "vmlinux"));
    const plan = planLink(last?.key, key, now === null ? "missing" : sameStat(last?.vmlinux, now) ? "as made" : "changed", "vmlinux");
    if (!plan.run) {
      this.report.link = { ms: Math.round(performance.now() - t0), skipped: true, reason: plan.reason };
      return undefined;
    }
    this.emit({ kind: "phase", build: this.id, phase: "link", total: 1 });
    this.hooks.onReplacing?.("vmlinux");
    section("kbuild env");
    const env = await kbuildEnv(this.tree.buildDir, this.tree.makeVars, this.state.dir);
    section("link");
    const objectHashes = new Map<string, Hash>();
    // What kbuild's initcall generator reads: vmlinux.a's members (natives in dist mode).
    for (const o of this.tree.layout.initcallObjects(this.tree, inputs)) objectHashes.set(o.path, hashes.get(o.path) ?? "<missing>");
    const rec = await linkVmlinux(this.tree, inputs, env, (label, target) => this.log(kbuildLine(label, target)),
      objectHashes, this.store.getMeta("initcalls"), prefetched);
    this.phase.writes.push(this.phase.stored(() => this.store.putMeta("initcalls", rec)));
    this.report.link = { ms: Math.round(performance.now() - t0), skipped: false, reason: plan.reason };
    return key;
  }

  /** Thin-link (only if some object changed since the last one, or its outputs were
   * touched by someone else), BE, link. */
  async run(): Promise<BuildReport> {
    const t0 = performance.now();
    const last = this.store.getMeta("thinlink");
    section("archives");
    // kbuild's archives are remade beside the thin-link and the BE (which read the objects,
    // not the archives), at nice 19, and awaited before the link, whose kbuild steps read
    // them. (Moved after the link instead, off the way to vmlinux, the bench's edits were no
    // faster: 2.22-3.20 s before, 2.62-3.30 s after; llvm-ar took the core the thin-link and
    // the BE left idle.)
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
      const hashOf = (f: string) => this.hashes.get(f);
      const key = thinLinkKey(thinLinkArgv(this.tree, "<stage>"), this.tree.objects.map((o) => o.path), hashOf);
      const plan = planThinLink(last && { ...last, units: last.modules }, key, (units) => thinLinkOutputs(units, hashOf));
      modules = plan.run ? (await this.thinLink()).modules : last!.modules;
      this.report.thinlink.reason = plan.reason;
      if (!plan.run) this.report.thinlink.skipped = true;
      // The thin-link rewrote index files hashed above: look at them afresh.
      section("thin-link record");
      if (plan.run) this.hashes.newEpoch();
      if (plan.run) await this.phase.stored(() => this.store.putMeta("thinlink", { key, modules, outputs: thinLinkOutputs(modules, hashOf) }));
      this.checkCancelled();
      await this.phase.run(modules, this.report.backend);
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
    const linkKey = await this.link(modules, initcalls);
    if (linkKey) this.hooks.onVmlinuxFresh?.();
    section("settle mtimes");
    this.tree.layout.settle(this.tree, modules);
    // vmlinux by its stat after the settle (which may move its mtime).
    const vmlinux = fileStat(path.join(this.tree.buildDir, "vmlinux"));
    if (linkKey) this.phase.writes.push(this.phase.stored(() => this.store.putMeta("link", { key: linkKey, vmlinux })));
    section("store writes");
    await Promise.all(this.phase.writes.splice(0));
    await this.phase.stored(() => this.store.flush());
    this.report.ok = true;
    this.report.ms += Math.round(performance.now() - t0);
    return this.report;
  }
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
  const hashes = new HashCache(tree.buildDir);
  const b = new Build(tree, tools, state, store, pool, { log: opts.log }, undefined, undefined, hashes);
  try {
    const report = await b.run();
    if (tree.kernelModules.length) {
      section("modules");
      const out = await buildKernelModules({
        tree, tools, state, store, pool, hashes, jobs: opts.jobs ?? os.cpus().length,
        hooks: { log: opts.log ?? (() => {}), emit: () => {}, buildId: 0 },
        vmlinuxRelinked: !report.link.skipped, reasons: new Map(), installModPath: opts.installModPath,
        env: () => kbuildEnv(tree.buildDir, tree.makeVars, state.dir),
      });
      report.kernelModules = out.modules;
      report.modulesFinal = out.final;
    }
    // Only new natives can push the cache over its cap.
    section("GC");
    const compiled = report.backend.compiled + (report.kernelModules ?? []).reduce((n, m) => n + m.backend.compiled, 0);
    if (compiled > 0 && store.roomy()) await new NativeCache(store, state.blobs).collectGarbage(opts.cacheCap ?? DEFAULT_CACHE_CAP);
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
