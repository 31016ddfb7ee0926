// An incremental session on one build dir, as the daemon runs it: from a set of files that
// may have changed, decide by content what to do (FE replays, or kbuild itself), stop early
// where outputs did not change, then thin-link, changed-only BE and link.
import * as fs from "node:fs";
import * as path from "node:path";
import { DEFAULT_CACHE_CAP } from "./blobs";
import { Build, BuildHooks, BuildReport, emptyReport, kbuildLine } from "./build";
import { BuildContext, StoreWriter } from "./context";
import { NativeCache } from "./cache";
import { BuildFailure, Cancelled, KtldError } from "./base/errors";
import { fixdepArgv, frontendJob, FrontendJob, writeCmdFile } from "./frontend";
import { FileChange, GENERATED, GENERATOR, KBUILD_FILE, ObjectGraph, planChanges } from "./graph";

/** What the watcher saw of a file; "scan" is a full rescan's look. */
export type WatchKind = "add" | "change" | "unlink" | "scan";
import { Hash, HashCache, hashFile } from "./base/hash";
import { FileNotes } from "./filenotes";
import { IncbinScanner } from "./incbin";
import { CmdFile, readCmdFile } from "./kbuild/cmdfile";
import { exportsSymbols, genksymsCommand, symverLines } from "./kbuild/symversions";
import { KernelModule, singleCompileCommand } from "./kbuild/modules";
import { buildKernelModules } from "./modulebuild";
import { checkWritable, importTree, KbuildTree, replayedUnit } from "./kbuild/tree";
import { JobPool } from "./pool";
import { section } from "./base/profile";
import { ProcessResult, runProcess } from "./base/process";
import { StateDir } from "./state";
import { Store } from "./store";
import { resolveToolchain, Toolchain } from "./toolchain";
import { killPoint } from "./base/killpoint";
import { sweepTempFiles } from "./kbuild/names";
import type { SharedCache } from "./sharedcache";
import { DistccConfig, distccConfig, isDistccFailure, recordedDistcc } from "./distcc";
import type { DistccState } from "./protocol";

export interface SessionOptions {
  readonly buildDir: string;
  readonly state: StateDir;
  readonly store: Store;
  readonly jobs: number;
  readonly cacheCap?: number;
  /** Install the kernel modules there after each change (`make modules_install INSTALL_MOD_PATH=`). */
  readonly installModPath?: string;
  /** The team's native cache behind the local one. */
  readonly shared?: SharedCache;
  /** `--distcc`: FE replays through distcc (DISTCC_HOSTS from `env`). */
  readonly distcc?: boolean;
  /** Where DISTCC_HOSTS is read (the daemon's environment). */
  readonly env?: NodeJS.ProcessEnv;
  readonly log?: (line: string) => void;
  /** `--be-executor CMD`: BE jobs as a DTLTO batch to CMD. */
  readonly beExecutor?: string;
}

export interface SessionBuildResult {
  readonly report: BuildReport;
  /** What the build looked at: changed files, FE jobs with reasons, kbuild hand-over reasons. */
  readonly changes: readonly FileChange[];
  readonly frontendJobs: readonly { object: string; reason: string; changed: boolean }[];
  readonly kbuild: readonly string[];
  /** Changes ktld saw and does not act on (sources of loadable kernel modules), one line each. */
  readonly notHandled: readonly string[];
  /** Nothing had changed: no job ran. */
  readonly noop: boolean;
}

/** One FE replay's result: the hash of what it wrote, whether that changed, and where. */
interface FrontendOutcome {
  readonly hash: Hash;
  readonly changed: boolean;
  readonly output: string;
}

export class Session {
  tree!: KbuildTree;
  graph!: ObjectGraph;
  tools!: Toolchain;
  incbinFiles = new Set<string>();
  /** object → build-dir-relative files it `.incbin`s (kept current across FE replays). */
  readonly incbinOf = new Map<string, string[]>();
  private incbinScanner!: IncbinScanner;
  /** Makefiles, Kbuild and Kconfig files of the directories the objects come from. */
  kbuildFiles: string[] = [];
  /** file → the loadable kernel modules made from it that ktld leaves to kbuild. */
  private kernelModuleUsers = new Map<string, string[]>();
  /** A member object of a kernel module ktld builds → the module. */
  private memberOf = new Map<string, KernelModule>();
  readonly pool: JobPool;
  /** FE replays through distcc, and their own pool sized for the hosts' slots. */
  private distcc?: { readonly cfg: DistccConfig; readonly pool: JobPool; remote: number; fallbacks: number; lastFallback?: string };
  private hashCache = new HashCache("");

  /** The file hashes of the last successful build, outside the store (src/filenotes.ts). */
  private readonly notes: FileNotes;

  constructor(private readonly opts: SessionOptions) {
    this.pool = new JobPool(opts.jobs, opts.state.childLedger);
    this.notes = new FileNotes(opts.state.notesPath);
    this.reimport();
    const recorded = recordedDistcc(this.tree.compilerWrapper);
    if (opts.distcc || recorded) {
      const cfg = distccConfig(opts.env ?? process.env, opts.distcc ? "option" : "recorded", recorded);
      if (typeof cfg === "string") {
        if (opts.distcc) throw new KtldError(cfg);
        opts.log?.(`[FE] ${cfg}`);
      } else {
        this.distcc = { cfg, pool: new JobPool(cfg.slots, opts.state.childLedger), remote: 0, fallbacks: 0 };
        opts.log?.(`[FE] replays through ${cfg.distcc} (${cfg.source === "option" ? "--distcc" : "as kbuild recorded them"}), DISTCC_HOSTS='${cfg.hosts}': ${cfg.slots} at once`);
      }
    }
    sweepTempFiles(this.tree.buildDir, [...this.tree.objects.map((o) => o.path), ...this.graph.nodes.keys(), ...this.memberOf.keys()]);
  }

  /** A file's hash as of the last successful build: the store's, or (the store lost) the notes'. */
  private baseline(file: string): Hash | undefined {
    return this.opts.store.baseline(file) ?? this.notes.get(file);
  }

  get buildDir(): string {
    return this.tree.buildDir;
  }

  /** (Re)reads the tree: after start and after kbuild changed it. */
  reimport(): void {
    this.tree = importTree(this.opts.buildDir);
    checkWritable(this.tree);
    this.tools = resolveToolchain(this.tree, this.opts.buildDir);
    this.graph = ObjectGraph.fromTree(this.tree);
    this.incbinScanner = new IncbinScanner(this.tree.buildDir, this.tree.srcTree);
    this.kernelModuleUsers = new Map();
    this.memberOf = new Map();
    for (const km of this.tree.kernelModules) {
      for (const m of km.members) this.memberOf.set(m.object, km);
      if (km.link) continue;
      for (const f of km.inputs) this.kernelModuleUsers.set(f, [...(this.kernelModuleUsers.get(f) ?? []), km.name]);
    }
    this.incbinFiles = new Set();
    this.incbinOf.clear();
    for (const n of this.graph.nodes.values()) {
      const files = this.incbinScanner.filesOf(n.cmd.source, n.cmd.deps);
      this.incbinOf.set(n.object, files);
      for (const f of files) this.incbinFiles.add(path.resolve(this.tree.buildDir, f));
    }
    const dirs = new Set([...this.graph.files(), ...this.kernelModuleUsers.keys()].map((f) => path.dirname(f)));
    dirs.add(this.tree.srcTree);
    this.kbuildFiles = [];
    for (const d of dirs) {
      let names: string[] = [];
      try {
        names = fs.readdirSync(d);
      } catch {
        continue;
      }
      for (const n of names) if ((KBUILD_FILE.test(n) && n !== ".config") || GENERATOR.test(`/${n}`)) this.kbuildFiles.push(path.join(d, n));
    }
  }

  /** The bitcode objects as this build's thin-links read them become their baseline: an FE
   * replay's early cutoff compares with what the link used, which kbuild may have made (a
   * hand-over, a make run while no daemon watched) and not with ktld's last FE of it. */
  private objectsAsLinked(hashes: Map<string, Hash | null>, objects: readonly string[]): void {
    for (const rel of objects) {
      const abs = path.join(this.buildDir, rel);
      const h = this.hashCache.get(rel);
      if (h && this.baseline(abs) !== h) hashes.set(abs, h);
    }
  }

  /** The FE replay of an object: kbuild's recorded compile; for the one unit of a
   * single-object kernel module, its compile alone, into ktld's bitcode file. */
  private frontendJobOf(object: string, reason: string): FrontendJob {
    const cmd = this.graph.nodes.get(object)!.cmd;
    const km = this.memberOf.get(object);
    const bitcode = km?.single ? km.members[0].bitcode : undefined;
    const command = bitcode ? singleCompileCommand(cmd, bitcode) : undefined;
    return frontendJob(cmd, reason, bitcode && command ? { command, output: bitcode } : undefined, this.distcc?.cfg);
  }

  private rescanIncbin(object: string): void {
    this.incbinScanner.newEpoch();
    const n = this.graph.nodes.get(object);
    if (!n) return;
    const files = this.incbinScanner.filesOf(n.cmd.source, n.cmd.deps);
    this.incbinOf.set(object, files);
    for (const f of files) this.incbinFiles.add(path.resolve(this.tree.buildDir, f));
  }

  /** Every file whose content decides the build: sources, headers, .incbin payloads, and
   * the kbuild files of their directories (found by the watcher). */
  inputFiles(): string[] {
    return [...new Set([...this.graph.files(), ...this.incbinFiles, ...this.kernelModuleUsers.keys(), path.join(this.buildDir, ".config")])];
  }

  /** Content changes among `candidates` (file → what the watcher saw) against the last
   * successful build. A file the store has never seen is judged by mtime against the
   * objects made from it (the tree as make left it); a kbuild file never seen, or a new
   * source file, is an addition. */
  diff(candidates: ReadonlyMap<string, WatchKind>): { changes: FileChange[]; hashes: Map<string, Hash | null> } {
    const changes: FileChange[] = [];
    const hashes = new Map<string, Hash | null>();
    // An object's time, stat'ed once: a header has hundreds of users, and where no input has
    // a baseline (a tree whose state was made at another path) each input asks for each of
    // its users' (2.6 s of stat on the developer fixture, the daemon's first answer held).
    const objectTimes = new Map<string, number | undefined>();
    for (const [file, kind] of candidates) {
      const now = hashFile(file);
      const before = this.baseline(file);
      const known = this.graph.objectsUsing(file).length > 0 || this.incbinFiles.has(file) || this.kernelModuleUsers.has(file);
      if (before === undefined) {
        if (now === null) continue;
        if (known) {
          hashes.set(file, now);
          if (this.newerThanUsers(file, objectTimes)) changes.push({ file, kind: "changed" });
        } else if (KBUILD_FILE.test(path.basename(file)) || GENERATOR.test(file)) {
          hashes.set(file, now);
          if (kind !== "scan") changes.push({ file, kind: "added" });
        } else if (kind === "add") {
          hashes.set(file, now);
          changes.push({ file, kind: "added" });
        }
        continue;
      }
      hashes.set(file, now);
      if (before === now) continue;
      changes.push({ file, kind: now === null ? "removed" : "changed" });
    }
    return { changes, hashes };
  }

  /** Every input file, as a full scan sees it. */
  scanAll(): Map<string, WatchKind> {
    return new Map([...this.inputFiles(), ...this.kbuildFiles].map((f) => [f, "scan" as const]));
  }

  private newerThanUsers(file: string, objectTimes: Map<string, number | undefined>): boolean {
    const st = fs.statSync(file, { throwIfNoEntry: false });
    if (!st) return false;
    return this.graph.objectsUsing(file).some((o) => {
      if (!objectTimes.has(o)) objectTimes.set(o, fs.statSync(path.join(this.buildDir, o), { throwIfNoEntry: false })?.mtimeMs);
      const t = objectTimes.get(o);
      return t === undefined || t < st.mtimeMs;
    });
  }

  /** For an object kbuild remade while no daemon watched (its bytes are not the last
   * build's): an input newer than it, as make would see it. A source edited, made and edited
   * back to the last build's bytes is no content change, but the object holds the edit: make
   * would compile it again, and so does the startup scan. An object with the last build's
   * bytes is current whatever the times say (a touch is no change). */
  private remadeAndStale(object: string): string | undefined {
    if (this.memberOf.get(object)?.single) return undefined; // its bitcode is ktld's own file
    const abs = path.join(this.buildDir, object);
    const before = this.baseline(abs);
    if (before === undefined) return undefined;
    if (this.hashCache.dir !== this.tree.buildDir) this.hashCache = new HashCache(this.tree.buildDir);
    if (this.hashCache.get(object) === before) return undefined;
    const t = fs.statSync(abs).mtimeMs;
    const newer = this.graph.nodes.get(object)!.inputs.find((f) => (fs.statSync(f, { throwIfNoEntry: false })?.mtimeMs ?? 0) > t);
    return newer && this.graph.shown(newer);
  }

  /** Runs kbuild for everything vmlinux needs short of its LTO link. */
  private async runKbuild(reasons: readonly string[], hooks: BuildHooks): Promise<void> {
    hooks.log?.(`ktld: handing over to kbuild (${reasons.join("; ")})`);
    hooks.onEvent?.({ kind: "phase", build: hooks.buildId ?? 0, phase: "kbuild", total: 1 });
    // `make vmlinux.a` would be a single-target build (kbuild treats %.a so) that rebuilds
    // nothing else: a goal of our own that needs the archives and the libraries builds
    // what they need. A pattern rule, so that it is nobody's default goal in the sub-makes.
    const rule = `ktld-%: ${[...this.tree.prelinkArchives, ...this.tree.libArchives].join(" ")} ;`;
    // With kernel modules, kbuild's descent also remakes the module objects a change reaches
    // (KBUILD_MODULES, as `make modules` sets it); ktld then links them its own way.
    const modules = this.tree.kernelModules.some((km) => km.link) ? ["KBUILD_MODULES=1"] : [];
    const args = [...this.tree.makeVars, ...modules, `-j${this.opts.jobs}`, `--eval=${rule}`, "ktld-prelink"];
    // make and its sub-makes are one process group: a cancel kills all of them.
    const out = await runProcess(["make", ...args], { cwd: this.buildDir, signal: hooks.signal, onLine: (l) => hooks.log?.(l), timeoutMs: 3 * 3600_000 });
    if (out.cancelled || hooks.signal?.aborted) throw new Cancelled();
    if (out.error) throw new BuildFailure("kbuild", out.error);
    if (out.code !== 0) throw new BuildFailure("kbuild", out.output.split("\n").slice(-60).join("\n"), out.timedOut ? "make did not finish in 3 hours" : undefined);
    this.reimport();
  }

  /** kbuild's gen_symversions for a replayed object (src/kbuild/symversions.ts): its
   * `#SYMVER` lines, or a one-line failure. An object kbuild's C rule does not cover (an
   * assembler source) keeps the lines it had. */
  private async symversions(object: string, cmd: CmdFile, signal?: AbortSignal, early?: Promise<ProcessResult>, output = object): Promise<string[] | string> {
    const nm = await runProcess([this.tools.nm, output], { cwd: this.buildDir, signal, timeoutMs: 60_000, tool: "nm (exports)" });
    if (nm.error) return `${nm.error}: install llvm (apt-get install llvm-19) or put it on PATH`;
    if (nm.code !== 0) return `${this.tools.nm} ${object} failed: ${nm.output.trim().split("\n").pop()}`;
    if (!exportsSymbols(nm.stdout)) return [];
    const gen = genksymsCommand(this.buildDir, object, cmd.command, cmd.source);
    if (!gen) return symverLines(this.buildDir, object);
    const r = await (early ?? this.genksyms(gen, signal));
    if (r.code !== 0 || r.error) return `genksyms failed: ${(r.error ?? r.output).trim().split("\n").slice(-3).join(" ")}`;
    return r.stdout.split("\n").filter((l) => l.startsWith("#SYMVER "));
  }

  private genksyms(command: string, signal?: AbortSignal): Promise<ProcessResult> {
    return runProcess(["/bin/sh", "-c", command], { cwd: this.buildDir, signal, timeoutMs: 5 * 60_000, tool: "genksyms" });
  }

  /** FE replays on the pool; returns each object's new hash and whether it changed. */
  private async frontend(jobs: FrontendJob[], report: BuildReport, hooks: BuildHooks): Promise<Map<string, FrontendOutcome>> {
    const t0 = performance.now();
    const changed = new Map<string, FrontendOutcome>();
    const failures: string[] = [];
    const fallbacks: { object: string; why: string }[] = [];
    let remote = 0;
    hooks.onEvent?.({ kind: "phase", build: hooks.buildId ?? 0, phase: "FE", total: jobs.length });
    let done = 0;
    await Promise.all(jobs.map(async (job) => {
      const node = this.graph.nodes.get(job.object)!;
      const output = job.output ?? job.object;
      const before = this.baseline(path.join(this.buildDir, output)) ?? hashFile(path.join(this.buildDir, output));
      hooks.onEvent?.({ kind: "job-start", build: hooks.buildId ?? 0, phase: "FE", object: job.object, reason: job.reason });
      // An object that exported symbols before most likely still does: its genksyms, which
      // reads only the source, runs beside the compile instead of after it.
      const modversions = this.tree.config.get("CONFIG_MODVERSIONS") === "y";
      const genEarly = modversions && symverLines(this.buildDir, job.object).length ? genksymsCommand(this.buildDir, job.object, node.cmd.command, node.cmd.source) : undefined;
      const early = genEarly ? this.genksyms(genEarly, hooks.signal) : undefined;
      const task = { argv: job.argv, cwd: this.buildDir, output: path.join(this.buildDir, output), ...(job.remote ? { env: job.remote.env } : {}) };
      const compiling = (job.remote && this.distcc ? this.distcc.pool : this.pool).run(task, hooks.signal, job.remote ? "FE compile (distcc)" : "FE compile");
      killPoint("frontend:compile");
      let res = await compiling;
      if (job.remote && this.distcc && !hooks.signal?.aborted) {
        if (isDistccFailure(res.code)) {
          // distcc itself failed (no host, a remote compile it would have retried here):
          // kbuild's command runs here, and the build says so.
          const why = `distcc exit ${res.code}: ${res.diagnostics.trim().split("\n").filter((l) => /distcc/.test(l)).pop() ?? "no message"}`;
          hooks.log?.(`[FE] ${job.object}: ${why}; compiled here`);
          fallbacks.push({ object: job.object, why });
          this.distcc.fallbacks++;
          this.distcc.lastFallback = `${job.object}: ${why}`;
          res = await this.pool.run({ ...task, argv: job.remote.localArgv, env: undefined }, hooks.signal, "FE compile");
        } else if (res.code === 0) {
          remote++;
          this.distcc.remote++;
        }
      }
      hooks.onEvent?.({ kind: "job-end", build: hooks.buildId ?? 0, phase: "FE", object: job.object, ok: res.code === 0, ms: Math.round(res.ms) });
      if (hooks.signal?.aborted) return;
      done++;
      const label = /\.S$/.test(node.cmd.source ?? "") ? "AS" : "CC";
      hooks.log?.(kbuildLine(this.memberOf.has(job.object) ? `${label} [M]` : label, job.object, [done, jobs.length]));
      if (res.code !== 0 || res.error) {
        failures.push(`${job.object}: ${res.error ?? "compile failed"}\n${res.diagnostics}`);
        return;
      }
      if (res.diagnostics.trim()) hooks.log?.(res.diagnostics.trimEnd());
      killPoint("frontend:before-cmd");
      if (job.depfile) {
        const fx = await runProcess(fixdepArgv(this.buildDir, job, node.cmd), { cwd: this.buildDir, signal: hooks.signal, timeoutMs: 60_000, tool: "fixdep" });
        if (fx.cancelled) return;
        if (fx.code !== 0) {
          failures.push(`${job.object}: fixdep failed: ${fx.error ?? fx.output}`);
          return;
        }
        const symvers = modversions ? await this.symversions(job.object, node.cmd, hooks.signal, early, output) : [];
        if (typeof symvers === "string") {
          failures.push(`${job.object}: ${symvers}`);
          return;
        }
        writeCmdFile(this.buildDir, job, node.cmd, fx.stdout + symvers.map((l) => `${l}\n`).join(""));
        const cmd = readCmdFile(this.buildDir, job.object);
        this.graph.set(cmd);
        this.rescanIncbin(job.object);
        replayedUnit(this.tree, job.object, cmd);
      }
      changed.set(job.object, { hash: res.outputHash!, changed: res.outputHash !== before, output });
    }));
    report.frontend.compiled = jobs.length;
    report.frontend.ms = Math.round(performance.now() - t0);
    if (this.distcc) Object.assign(report.frontend, { remote, fallbacks });
    if (hooks.signal?.aborted) throw new Cancelled();
    if (failures.length) throw new BuildFailure("FE", failures.join("\n"));
    return changed;
  }

  /** One build from the files that may have changed ("all": every input file). */
  async build(candidates: ReadonlyMap<string, WatchKind> | "all", hooks: BuildHooks = {}): Promise<SessionBuildResult> {
    const t0 = performance.now();
    const report = emptyReport();
    const store = this.opts.store;
    // The one writer of the store in this build, the build context's too: a write that finds
    // no room is said once and skipped (the next build looks again).
    const writer = new StoreWriter(store, this.opts.state.dir, hooks.log ?? (() => {}));
    section("diff");
    let { changes, hashes } = this.diff(candidates === "all" ? this.scanAll() : candidates);
    section("plan");
    const plan = planChanges(changes, this.graph, this.incbinFiles, (f) => this.kernelModuleUsers.get(f) ?? []);
    for (const line of plan.notHandled) hooks.log?.(`ktld: ${line}`);
    // Objects whose last FE failed (clang removes its output on error), and, on a full
    // scan, objects that are missing: FE again whatever their inputs say.
    const feDirty = (store.getMeta("feDirty")) ?? [];
    const fe = new Map(plan.frontend);
    for (const o of feDirty) if (this.graph.nodes.has(o) && !fe.has(o)) fe.set(o, "its last FE failed");
    if (candidates === "all") {
      for (const o of this.graph.nodes.keys()) {
        if (fe.has(o)) continue;
        if (!fs.existsSync(path.join(this.buildDir, o))) {
          fe.set(o, "object missing");
          continue;
        }
        const newer = this.remadeAndStale(o);
        if (newer) fe.set(o, `remade outside ktld and older than ${newer} (make would compile it again)`);
      }
    }
    const frontendJobs: { object: string; reason: string; changed: boolean }[] = [];
    const lastOk = store.getMeta("lastOk") === true && fs.existsSync(path.join(this.buildDir, "vmlinux"));
    try {
      // A full scan always checks the back half too: objects may have been rebuilt by a
      // make run while no daemon watched (a cheap check when nothing changed).
      let back = !lastOk || plan.incbin.length > 0 || candidates === "all";
      // Kernel modules to build, and why (every placed module is checked when vmlinux is).
      const moduleWhy = new Map<string, string>();
      if (plan.kbuild.length) {
        section("kbuild hand-over");
        await this.runKbuild(plan.kbuild, hooks);
        // kbuild rebuilt what it had to: the tree as it is now is the new baseline.
        const rescan = this.scanAll();
        hashes = new Map([...rescan.keys()].map((f) => [f, hashFile(f)]));
        // Files saved while make ran may or may not be in what it built: they keep their
        // old baseline, so the next build looks at them again. Not the headers make itself
        // generated meanwhile (utsrelease.h after a version change): it rebuilt their users.
        for (const f of hooks.changedMeanwhile?.() ?? []) if (!GENERATED.test(f)) hashes.delete(f);
        back = true;
      } else if (fe.size) {
        const jobs = [...fe].map(([o, why]) => this.frontendJobOf(o, why));
        let changed: Map<string, FrontendOutcome>;
        section("FE");
        try {
          changed = await this.frontend(jobs, report, hooks);
        } catch (e) {
          if (e instanceof BuildFailure) await writer.write(() => store.putMeta("feDirty", [...new Set([...feDirty, ...jobs.map((j) => j.object)])]));
          throw e;
        }
        // Through distcc, where each ran and why is part of its reason (`ktld why`).
        for (const j of jobs) frontendJobs.push({ object: j.object, reason: this.distcc ? `${j.reason}; ${j.route}` : j.reason, changed: changed.get(j.object)?.changed ?? false });
        // Early cutoff: only a target with a changed object is built; the objects' hashes
        // (taken by the pool worker) become the baseline either way.
        for (const [o, c] of changed) {
          hashes.set(path.join(this.buildDir, c.output), c.hash);
          if (!c.changed) continue;
          const km = this.memberOf.get(o);
          if (km) moduleWhy.set(km.name, moduleWhy.get(km.name) ?? `${o} changed`);
          else back = true;
        }
      }
      if (back || moduleWhy.size) {
        await writer.write(() => store.putMeta("lastOk", false));
      }
      // vmlinux is whole: said at once, before the build's bookkeeping and the module steps.
      const onVmlinuxFresh = () => {
        report.vmlinuxReadyMs = Math.round(performance.now() - t0);
        hooks.log?.(`${hooks.buildId !== undefined ? `#${hooks.buildId} ` : ""}vmlinux fresh after ${(report.vmlinuxReadyMs / 1000).toFixed(2)} s${this.tree.kernelModules.length ? " (kernel modules next)" : ""}`);
        hooks.onEvent?.({ kind: "ready", build: hooks.buildId ?? 0, target: "vmlinux", ms: report.vmlinuxReadyMs });
      };
      // Made once, after a kbuild hand-over (which may import the tree again).
      let made: BuildContext | undefined;
      const context = () => {
        if (this.hashCache.dir !== this.tree.buildDir) this.hashCache = new HashCache(this.tree.buildDir);
        made ??= new BuildContext({
          tree: this.tree, tools: this.tools, state: this.opts.state, store, pool: this.pool, hashes: this.hashCache,
          hooks: { ...hooks, onVmlinuxFresh }, incbinOf: this.incbinOf, jobs: this.opts.jobs, shared: this.opts.shared, beExecutor: this.opts.beExecutor,
        }, { writer });
        return made;
      };
      if (back) {
        await new Build(context(), report).run();
        this.objectsAsLinked(hashes, this.tree.objects.filter((o) => o.bitcode).map((o) => o.path));
        // Only new natives can push the cache over its cap.
        section("GC");
        if (report.backend.compiled > 0) await writer.write(() => new NativeCache(store, this.opts.state.blobs).collectGarbage(this.opts.cacheCap ?? DEFAULT_CACHE_CAP));
      }
      if ((back || moduleWhy.size) && this.tree.kernelModules.length) {
        section("modules");
        const out = await buildKernelModules(context(), { vmlinuxRelinked: back && !report.link.skipped, reasons: moduleWhy, installModPath: this.opts.installModPath });
        report.kernelModules = out.modules;
        report.modulesFinal = out.final;
        this.objectsAsLinked(hashes, this.tree.kernelModules.flatMap((km) => km.members.filter((m) => !m.native).map((m) => m.bitcode)));
        section("GC");
        if (out.modules.some((m) => m.backend.compiled > 0)) await writer.write(() => new NativeCache(store, this.opts.state.blobs).collectGarbage(this.opts.cacheCap ?? DEFAULT_CACHE_CAP));
      }
      report.ok = true;
      section("baseline write");
      // No room: the baseline stays the old one, and the next build looks again (lmdb
      // must not meet a full disk).
      killPoint("baseline:before-commit");
      if (await writer.write(() => store.commitBaseline(hashes))) this.notes.record(hashes);
      killPoint("baseline:after-commit");
    } catch (e) {
      report.ok = false;
      if (e instanceof BuildFailure) {
        report.error = e.message;
        report.diagnostics = e.diagnostics;
      } else if (e instanceof Cancelled) {
        report.error = "cancelled: newer changes arrived";
      } else {
        report.error = (e as Error).message;
      }
    }
    report.ms = Math.round(performance.now() - t0);
    // A change nothing acts on (a header no object uses: kbuild's link rewrites
    // include/generated/utsversion.h every time) is taken into the baseline and is no build.
    const acted = plan.kbuild.length > 0 || plan.frontend.size > 0 || plan.incbin.length > 0;
    const noop = report.ok && !acted && !frontendJobs.length && report.backend.compiled + report.backend.cacheHits === 0
      && !report.kernelModules?.length && !report.modulesFinal
      && report.thinlink.skipped && report.link.skipped && !plan.notHandled.length;
    return { report, changes, frontendJobs, kbuild: plan.kbuild, notHandled: plan.notHandled, noop };
  }

  /** distcc as FE replays use it, for `ktld status`; null when they run here. */
  distccState(): DistccState | null {
    const d = this.distcc;
    return d ? { hosts: d.cfg.hosts, slots: d.cfg.slots, source: d.cfg.source, remote: d.remote, fallbacks: d.fallbacks, ...(d.lastFallback ? { lastFallback: d.lastFallback } : {}) } : null;
  }

  async close(): Promise<void> {
    await this.distcc?.pool.close();
    await this.pool.close();
  }
}
