// One build of vmlinux's LTO link: thin-link, the BE jobs whose inputs changed, link.
import * as os from "node:os";
import * as path from "node:path";
import { JobRecord, kbuildLine } from "./backendphase";
import { DEFAULT_CACHE_CAP } from "./blobs";
import { NativeCache } from "./cache";
import { BuildContext } from "./context";
import { BuildFailure } from "./base/errors";
import { endProfile, ProfileReport, section, startProfile } from "./base/profile";
import { Hash } from "./base/hash";
import { btfFromFirstLink, checkWritable, importTree } from "./kbuild/tree";
import { btfRecords, prepareBtf } from "./btf";
import { initcallSignatures, linkVmlinux, nativeInputs, vmlinuxOArgv } from "./link";
import { StepClock } from "./stepclock";
import { buildKernelModules, KernelModuleReport, ModulesFinalReport } from "./modulebuild";
import { JobPool } from "./pool";
import { fileStat, sameStat, Store } from "./store";
import { StateDir } from "./state";
import { linkKey } from "./steps";
import { emptyTargetReport, LinkTarget, runTarget, TargetOutcome, TargetReport } from "./target";
import { publishIndexFiles, thinLinkArgv } from "./thinlink";
import { resolveToolchain } from "./toolchain";
import { sweepTempFiles } from "./kbuild/names";
import { SharedCache, SharedCacheConfig } from "./sharedcache";

export { JobRecord, kbuildLine };
export type { BuildHooks, Replaced } from "./context";

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
  /** The team's native cache behind the local one (`--shared-cache`). */
  readonly shared?: SharedCacheConfig;
  /** `--be-executor CMD`: BE jobs as a DTLTO batch to CMD (src/executor.ts). */
  readonly beExecutor?: string;
}

/** A build's report: vmlinux's steps (the shape of every link target, src/target.ts), the FE
 * before them, and the kernel modules after. */
export interface BuildReport extends TargetReport {
  ok: boolean;
  error?: string;
  diagnostics?: string;
  frontend: { compiled: number; ms: number; remote?: number; fallbacks?: { object: string; why: string }[] };
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
  return { ok: false, frontend: { compiled: 0, ms: 0 }, ...emptyTargetReport(), ms: 0 };
}

/** vmlinux as a link target: its thin-link over every object of the tree, its link the
 * layout's `vmlinux.o` from the natives, objtool, then kbuild's own remaining steps.
 * `ready`: what the link must wait for (kbuild's archives, remade beside the BE). */
function vmlinuxTarget(ctx: BuildContext, ready: Promise<void>, initcalls?: Promise<ReadonlyMap<string, string>>): LinkTarget {
  const { tree, store } = ctx;
  const hashOf = (f: string) => ctx.hashes.get(f);
  const lastLink = store.getMeta("link");
  return {
    name: "vmlinux",
    units: tree.units,
    thinLink: {
      banner: ["LD", `vmlinux.thinlto-index (${tree.objects.length} objects)`],
      stage: "stage",
      argv: (stage) => thinLinkArgv(tree, stage),
      inputs: tree.objects.map((o) => o.path),
      publish: (stage) => publishIndexFiles(tree, stage, ctx.hashes),
    },
    last: { thinlink: store.getMeta("thinlink"), linkKey: lastLink?.key },
    recordThinLink: (rec) => ctx.writer.write(() => store.putMeta("thinlink", rec)),
    linkStep: (units) => {
      const inputs = nativeInputs(tree.objects, new Set(units));
      const key = linkKey(vmlinuxOArgv(tree, inputs), inputs.map((o) => o.path), tree.vmlinuxLink.after, hashOf);
      return {
        key,
        output: "vmlinux",
        state: () => {
          const now = fileStat(path.join(tree.buildDir, "vmlinux"));
          return now === null ? "missing" : sameStat(lastLink?.vmlinux, now) ? "as made" : "changed";
        },
        run: async () => {
          section("archives");
          await ready;
          ctx.emit({ kind: "phase", build: ctx.id, phase: "link", total: 1 });
          ctx.hooks.onReplacing?.("vmlinux");
          section("kbuild env");
          const env = await ctx.env();
          section("link");
          const objectHashes = new Map<string, Hash>();
          // What kbuild's initcall generator reads: vmlinux.a's members (natives in dist mode).
          for (const o of tree.layout.initcallObjects(tree, inputs)) objectHashes.set(o.path, hashOf(o.path) ?? "<missing>");
          const clock = new StepClock((step, ms) => ctx.emit({ kind: "link-step", build: ctx.id, target: "vmlinux", step, ...(ms !== undefined ? { ms } : {}) }));
          // The BTF step's inputs are looked at beside vmlinux.o's link, objtool and modpost.
          const btf = prepareBtf({
            buildDir: tree.buildDir, stateDir: ctx.state.dir, env, config: tree.config, inputs: inputs.map((o) => o.path), hashOf,
            blobOf: (h) => (ctx.state.blobs.has(h) ? ctx.state.blobs.pathOf(h) : undefined), records: btfRecords(store.getMeta("btf")), signal: ctx.signal,
            btfFromFirstLink: btfFromFirstLink(tree),
          });
          btf.catch(() => undefined);
          const out = await linkVmlinux(tree, inputs, env, (label, target) => ctx.log(kbuildLine(label, target)),
            objectHashes, store.getMeta("initcalls"), initcalls, clock, btf, ctx.state.dir);
          ctx.writer.later(() => store.putMeta("initcalls", out.initcalls));
          const records = out.btf?.records;
          // A failed or skipped pahole leaves no record: the next link runs it again.
          ctx.writer.later(() => store.putMeta("btf", records));
          return clock.steps;
        },
      };
    },
  };
}

/** One build of vmlinux: its link target's pipeline, with kbuild's archives remade beside it. */
export class Build {
  readonly report: BuildReport;

  constructor(private readonly ctx: BuildContext, report?: BuildReport) {
    this.report = report ?? emptyReport();
  }

  /** Thin-link (only if some object changed since the last one, or its outputs were
   * touched by someone else), BE, link. */
  async run(): Promise<BuildReport> {
    const t0 = performance.now();
    const { ctx } = this;
    const tree = ctx.tree;
    section("archives");
    // kbuild's archives are remade beside the thin-link and the BE (which read the objects,
    // not the archives), at nice 19, and awaited before the link, whose kbuild steps read
    // them. (Moved after the link instead, off the way to vmlinux, the bench's edits were no
    // faster: 2.22-3.20 s before, 2.62-3.30 s after; llvm-ar took the core the thin-link and
    // the BE left idle.)
    const archives = tree.layout.remakeArchives(tree, () => ctx.env())
      .then((made) => { for (const a of made) ctx.log(kbuildLine("AR", a)); });
    // A first link (no initcall record yet): the objects' initcall symbols, which kbuild's
    // generator orders by, are read beside the BE instead of after it.
    const initcalls = ctx.store.getMeta("initcalls") === undefined && tree.layout.initcallsBeforeBackend
      ? initcallSignatures(tree.buildDir, ctx.tools.nm, tree.layout.initcallObjects(tree, []).map((o) => o.path), undefined, ctx.signal)
      : undefined;
    initcalls?.catch(() => undefined); // awaited by the link, if it comes to that
    let outcome: TargetOutcome;
    let failed = false;
    try {
      ctx.hashes.newEpoch();
      outcome = await runTarget(ctx, vmlinuxTarget(ctx, archives, initcalls), this.report);
    } catch (e) {
      failed = true;
      throw e;
    } finally {
      section("archives");
      // Never left running (or rejecting unhandled) after the build ends; its own failure
      // is the build's when nothing failed before it.
      await archives.catch((e: unknown) => (failed ? undefined : Promise.reject(e)));
    }
    if (outcome.linked) ctx.hooks.onVmlinuxFresh?.();
    section("settle mtimes");
    tree.layout.settle(tree, outcome.units);
    // vmlinux by its stat after the settle (which may move its mtime).
    const vmlinux = fileStat(path.join(tree.buildDir, "vmlinux"));
    const linked = outcome.linked;
    if (linked) ctx.writer.later(() => ctx.store.putMeta("link", { key: linked, vmlinux }));
    section("store writes");
    await ctx.writer.settle();
    await ctx.writer.write(() => ctx.store.flush());
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
  const state = await StateDir.open(path.resolve(opts.stateDir ?? path.join(tree.buildDir, ".ktld")), tree.buildDir);
  sweepTempFiles(tree.buildDir, [...tree.objects.map((o) => o.path), ...tree.units.keys(), ...tree.kernelModules.flatMap((km) => km.members.map((m) => m.object))]);
  if (state.reaped) opts.log?.(`ktld: stopped ${state.reaped} process group(s) a ktld that died had left running`);
  const store = Store.open({ path: state.storePath, log: opts.log });
  const pool = new JobPool(opts.jobs ?? os.cpus().length, state.childLedger);
  const shared = opts.shared && new SharedCache(opts.shared, opts.log);
  const ctx = new BuildContext({ tree, tools, state, store, pool, hooks: { log: opts.log }, jobs: opts.jobs ?? os.cpus().length, shared, beExecutor: opts.beExecutor });
  const b = new Build(ctx);
  try {
    const report = await b.run();
    if (tree.kernelModules.length) {
      section("modules");
      const out = await buildKernelModules(ctx, { vmlinuxRelinked: !report.link.skipped, reasons: new Map(), installModPath: opts.installModPath });
      report.kernelModules = out.modules;
      report.modulesFinal = out.final;
    }
    // Only new natives can push the cache over its cap.
    section("GC");
    const compiled = report.backend.compiled + (report.kernelModules ?? []).reduce((n, m) => n + m.backend.compiled, 0);
    if (compiled > 0) await ctx.writer.write(() => new NativeCache(store, state.blobs).collectGarbage(opts.cacheCap ?? DEFAULT_CACHE_CAP));
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
    shared?.close();
    await pool.close();
    await store.close();
    state.release();
  }
}
