// Kernel modules (`.ko`) through distributed ThinLTO: per module, a thin-link over its bitcode
// members (`ld.lld -r --thinlto-index-only`), the BE of the members whose inputs changed (the
// same cache as vmlinux's natives), the module object linked from the natives with kbuild's
// `ld -r` flags and objtool as kbuild runs it; then, once for all modules, kbuild's own
// modpost and final link (scripts/Makefile.modpost, scripts/Makefile.modfinal).
//
// kbuild links each module with in-process ThinLTO inside `ld.lld -r`, which recompiles every
// member after any edit. The natives ktld makes are other code than that link's (neither is
// wrong; docs/correctness.md): the reference for a module is a clean ktld build.
import * as fs from "node:fs";
import * as path from "node:path";
import { koPath, nativePath } from "./kbuild/names";
import { BackendPhase, BackendReport, emptyBackendReport, kbuildLine, PhaseHooks } from "./backendphase";
import { BuildFailure, Cancelled } from "./errors";
import { HashCache } from "./hash";
import { mtimeOf, settleMtimes } from "./kbuild/dist";
import { KernelModule, moduleLinkArgv, moduleThinLinkArgv, singleCompileCommand } from "./kbuild/modules";
import { readCmdFile } from "./kbuild/cmdfile";
import type { KbuildTree } from "./kbuild/tree";
import { JobPool } from "./pool";
import { section } from "./profile";
import { runProcess, runStep } from "./process";
import { StateDir } from "./state";
import { elfSection } from "./elf";
import { Hash, hashBytes } from "./hash";
import { ModulesFinalRecord, ModuleTargetRecord, Store } from "./store";
import { linkKey, planLink, planModulesFinal, planThinLink, thinLinkKey, thinLinkOutputs } from "./steps";
import { publishStaged } from "./thinlink";
import { Toolchain } from "./toolchain";

/** What one kernel module's build did. */
export interface KernelModuleReport {
  readonly name: string;
  /** `fs/ext4/ext4.ko` */
  readonly ko: string;
  /** Why the module was looked at in this build. */
  reason: string;
  /** Units whose bitcode ktld compiled first (a single-object module's, after make). */
  bitcode: number;
  /** `reason`: why the step ran, or why it did not (src/steps.ts). */
  thinlink: { ms: number; skipped: boolean; indexChanged: number; reason?: string };
  backend: BackendReport;
  link: { ms: number; skipped: boolean; reason?: string };
}

/** kbuild's modpost and final link, once per build for all modules. */
export interface ModulesFinalReport {
  ms: number;
  /** What kbuild's make printed it did (`LD [M]  fs/ext4/ext4.ko`, `BTF [M] ...`). */
  steps: string[];
  /** Why kbuild's steps were not run (their outputs would be the bytes in place). */
  skipped?: string;
  /** Why they ran (src/steps.ts, planModulesFinal). */
  reason?: string;
}

function emptyModuleReport(km: KernelModule, reason: string): KernelModuleReport {
  return {
    name: km.name, ko: koPath(km.object), reason, bitcode: 0,
    thinlink: { ms: 0, skipped: true, indexChanged: 0 }, backend: emptyBackendReport(), link: { ms: 0, skipped: true },
  };
}

/** The module object as ktld last made it. */
function linked(km: KernelModule, rec: ModuleTargetRecord | undefined, hashes: HashCache): boolean {
  return rec?.link !== undefined && hashes.get(km.object) === rec.link.object;
}

/** One kernel module's thin-link, BE and module link. */
export class ModuleBuild {
  readonly report: KernelModuleReport;
  private readonly phase: BackendPhase;

  constructor(
    private readonly tree: KbuildTree,
    private readonly km: KernelModule,
    tools: Toolchain,
    private readonly state: StateDir,
    store: Store,
    private readonly pool: JobPool,
    private readonly hooks: PhaseHooks,
    private readonly hashes: HashCache,
    reason: string,
    /** What each unit `.incbin`s, as the session knows it (else each build scans every
     * unit's source and headers again: 0.17 s per build on the developer fixture). */
    incbinOf?: ReadonlyMap<string, readonly string[]>,
  ) {
    this.report = emptyModuleReport(km, reason);
    this.phase = new BackendPhase(tree, tree.moduleUnits, tools, state, store, pool, hooks, incbinOf, hashes);
  }

  private get dir(): string {
    return this.tree.buildDir;
  }

  private checkCancelled(): void {
    if (this.hooks.signal?.aborted) throw new Cancelled();
  }

  /** A single-object module after make has no bitcode (its rule links in place): compile it
   * into ktld's file, from kbuild's recorded command. */
  private async ensureBitcode(rec: ModuleTargetRecord | undefined): Promise<void> {
    // A single-object module's object that is not the one ktld last linked was remade by
    // kbuild (make modules, a hand-over): its compile may have seen other sources than ktld's
    // bitcode file did. Without a record ktld cannot tell: compiled again too.
    const remade = this.km.single && (rec?.link === undefined || this.hashes.get(this.km.object) !== rec.link.object);
    const missing = this.km.members.filter((m) => !m.native && (remade || !fs.existsSync(path.join(this.dir, m.bitcode))));
    await Promise.all(missing.map(async (m) => {
      const cmd = readCmdFile(this.dir, m.object);
      const command = m.bitcode === m.object ? cmd.command : singleCompileCommand(cmd, m.bitcode);
      if (!command) throw new BuildFailure("FE", `${m.object}: its recorded compile does not name its output; run make modules`);
      const res = await this.pool.run({ argv: ["/bin/sh", "-c", command], cwd: this.dir, output: path.join(this.dir, m.bitcode) }, this.hooks.signal, "FE compile");
      if (this.hooks.signal?.aborted) throw new Cancelled();
      this.hooks.log(kbuildLine("CC [M]", m.bitcode === m.object ? m.object : `${m.object} (bitcode)`));
      if (res.code !== 0 || res.error) throw new BuildFailure("FE", `${m.object}: ${res.error ?? "compile failed"}\n${res.diagnostics}`);
      const depfile = /-Wp,-MMD,(\S+)/.exec(command)?.[1];
      if (depfile) fs.rmSync(path.join(this.dir, depfile), { force: true });
      this.report.bitcode++;
    }));
    if (missing.length) this.hashes.newEpoch();
  }

  private async thinLink(): Promise<readonly string[]> {
    const t0 = performance.now();
    const stage = this.state.freshDir(`stage-${this.km.name}`);
    const list = path.join(stage, "module.thinlto-index");
    this.hooks.log(kbuildLine("LD [M]", `${this.km.object}.thinlto-index (${this.km.members.length} objects)`));
    const r = await runProcess(moduleThinLinkArgv(this.km, stage, list), { cwd: this.dir, signal: this.hooks.signal, timeoutMs: 10 * 60_000, tool: "thin-link" });
    if (r.cancelled) throw new Cancelled();
    if (r.error) throw new BuildFailure("thin-link", r.error);
    if (r.code !== 0 || r.timedOut) throw new BuildFailure("thin-link", r.output, r.timedOut ? `${this.km.name}: thin-link gave no result after 10 minutes` : undefined);
    const out = publishStaged(this.dir, this.km.members.filter((m) => !m.native).map((m) => m.bitcode), stage, list, this.hashes);
    fs.rmSync(stage, { recursive: true, force: true });
    this.report.thinlink = { ...this.report.thinlink, ms: Math.round(performance.now() - t0), skipped: false, indexChanged: out.changed.size };
    return out.modules;
  }

  /** Returns whether the module object was (re)linked. */
  async run(records: Record<string, ModuleTargetRecord>): Promise<boolean> {
    const km = this.km;
    const rec = records[km.name];
    section(`module ${km.name}`);
    await this.ensureBitcode(rec);
    this.checkCancelled();
    const hashOf = (f: string) => this.hashes.get(f);
    const key = thinLinkKey(moduleThinLinkArgv(km, "<stage>", "<list>"), km.members.map((m) => m.bitcode), hashOf);
    const plan = planThinLink(rec?.thinlink, key, (units) => thinLinkOutputs(units, hashOf));
    const units = plan.run ? await this.thinLink() : rec!.thinlink!.units;
    this.report.thinlink.reason = plan.reason;
    if (plan.run) this.hashes.newEpoch();
    const thinlink = plan.run ? { key, units, outputs: thinLinkOutputs(units, hashOf) } : rec!.thinlink!;
    this.checkCancelled();
    await this.phase.run(units, this.report.backend);
    this.checkCancelled();
    // The module object from the natives, in kbuild's member order, then objtool.
    const loaded = new Set(units);
    const inputs = km.members.flatMap((m) => (m.native ? [m.object] : loaded.has(m.bitcode) ? [nativePath(m.bitcode)] : []));
    const argv = moduleLinkArgv(km, inputs, km.object);
    const objectKey = linkKey(argv, inputs, km.link!.after, hashOf);
    const now = hashOf(km.object);
    const link = planLink(rec?.link?.key, objectKey, now === null || now === undefined ? "missing" : linked(km, rec, this.hashes) ? "as made" : "changed", km.object);
    this.report.link.reason = link.reason;
    let relinked = false;
    if (link.run) {
      const t0 = performance.now();
      this.hooks.log(kbuildLine("LD [M]", km.object));
      await runStep(this.dir, argv, undefined, `LD [M] ${km.object}`, this.hooks.signal);
      if (km.link!.after) await runStep(this.dir, ["/bin/sh", "-c", km.link!.after], undefined, `objtool ${km.object}`, this.hooks.signal);
      this.hashes.newEpoch();
      this.report.link = { ms: Math.round(performance.now() - t0), skipped: false, reason: link.reason };
      relinked = true;
    }
    records[km.name] = { thinlink, link: { key: objectKey, object: this.hashes.get(km.object) } };
    await Promise.all(this.phase.writes.splice(0));
    return relinked;
  }
}

/** The `modules.order` files make compares with a module object: its directory's, and each
 * parent's up to the top (kbuild rewrites them when an object of theirs is newer). */
function modulesOrderChain(object: string): (readonly [string, readonly string[]])[] {
  const chain: [string, string[]][] = [];
  let prev = object;
  for (let d = path.dirname(object); ; d = path.dirname(d)) {
    const file = d === "." ? "modules.order" : path.join(d, "modules.order");
    chain.push([file, [prev]]);
    prev = file;
    if (d === ".") break;
  }
  return chain;
}

/** kbuild's modpost over vmlinux.o and every module, then its final module link
 * (`.mod.o`, `.ko`, BTF against vmlinux), as `make modules` runs them, with kbuild's own
 * makefiles and environment: make decides which `.ko` are out of date. */
export async function finishModules(
  tree: KbuildTree, relinked: readonly KernelModule[], env: Record<string, string>, jobs: number,
  log: (line: string) => void, signal?: AbortSignal,
): Promise<ModulesFinalReport> {
  const t0 = performance.now();
  settleMtimes(tree.buildDir, relinked.flatMap((km) => modulesOrderChain(km.object)));
  const srctree = env.srctree ?? tree.srcTree;
  const steps: string[] = [];
  for (const makefile of ["Makefile.modpost", "Makefile.modfinal"]) {
    section(makefile);
    const argv = ["make", "-rR", `-j${jobs}`, "-f", path.resolve(tree.buildDir, srctree, "scripts", makefile), "KBUILD_MODULES=1", "quiet=quiet_", "Q=@"];
    const r = await runProcess(argv, {
      cwd: tree.buildDir, env, signal, timeoutMs: 30 * 60_000, tool: makefile.replace("Makefile.", ""),
      onLine: (l) => {
        if (/^\s+[A-Z][A-Z0-9_]*( \[M\])?\s+\S/.test(l)) {
          steps.push(l.trim());
          log(l.trimEnd());
        }
      },
    });
    if (r.cancelled || signal?.aborted) throw new Cancelled();
    if (r.error) throw new BuildFailure(makefile, r.error);
    if (r.code !== 0) throw new BuildFailure(makefile.replace("Makefile.", ""), r.output.split("\n").slice(-40).join("\n"), r.timedOut ? `${makefile}: no result after 30 minutes` : undefined);
  }
  return { ms: Math.round(performance.now() - t0), steps };
}

/** `make modules_install INSTALL_MOD_PATH=dir` as kbuild does it (scripts/Makefile.modinst:
 * every module of modules.order under lib/modules/<release>/kernel, modules.order, the
 * builtin lists, the build symlink, depmod), with kbuild's own makefile and environment. */
export async function installModules(tree: KbuildTree, dir: string, env: Record<string, string>, log: (line: string) => void, signal?: AbortSignal): Promise<string[]> {
  const root = path.resolve(dir);
  const release = fs.readFileSync(path.join(tree.buildDir, "include/config/kernel.release"), "utf8").trim();
  const srctree = env.srctree ?? tree.srcTree;
  const steps: string[] = [];
  const argv = ["make", "-rR", "-f", path.resolve(tree.buildDir, srctree, "scripts", "Makefile.modinst"), "KBUILD_MODULES=1",
    `INSTALL_MOD_PATH=${root}`, `MODLIB=${path.join(root, "lib/modules", release)}`, "quiet=quiet_", "Q=@"];
  const r = await runProcess(argv, {
    cwd: tree.buildDir, env: { ...env, INSTALL_MOD_PATH: root }, signal, timeoutMs: 10 * 60_000, tool: "modules_install",
    onLine: (l) => {
      if (/^\s+(INSTALL|DEPMOD|SYMLINK|STRIP|SIGN)\s/.test(l)) steps.push(l.trim());
    },
  });
  if (r.cancelled || signal?.aborted) throw new Cancelled();
  if (r.error || r.code !== 0) throw new BuildFailure("modules_install", (r.error ?? r.output).split("\n").slice(-20).join("\n"), `installing the modules into ${root} failed; is the directory writable (and kmod's depmod installed)?`);
  log(kbuildLine("INSTALL", `${steps.filter((x) => /\.ko$/.test(x)).length} modules to ${path.join(root, "lib/modules", release)} (depmod)`));
  return steps;
}

/** The modules ktld builds (placed in the tree), and one line for each it leaves to kbuild. */
export function placedModules(tree: KbuildTree): { placed: KernelModule[]; unplaced: string[] } {
  return {
    placed: tree.kernelModules.filter((km) => km.link !== undefined),
    unplaced: tree.kernelModules.flatMap((km) => (km.unplaced ? [km.unplaced] : [])),
  };
}

/** Builds every placed module that needs it (by content: a current module costs a few stat
 * calls), then kbuild's modpost and final link if a module object or vmlinux changed. */
export async function buildKernelModules(opts: {
  tree: KbuildTree; tools: Toolchain; state: StateDir; store: Store; pool: JobPool; hooks: PhaseHooks; hashes: HashCache;
  vmlinuxRelinked: boolean; reasons: ReadonlyMap<string, string>; env: () => Promise<Record<string, string>>; jobs: number;
  incbinOf?: ReadonlyMap<string, readonly string[]>;
  /** Install the modules there after each change (`make modules_install INSTALL_MOD_PATH=`). */
  installModPath?: string;
}): Promise<{ modules: KernelModuleReport[]; final?: ModulesFinalReport }> {
  const { tree, hooks } = opts;
  const { placed } = placedModules(tree);
  if (!tree.kernelModules.length) return { modules: [] };
  // Files may have changed since the hashes were last looked at (FE replays, a vmlinux build).
  opts.hashes.newEpoch();
  const records = { ...(opts.store.getMeta("kernelModules") ?? {}) };
  const reports: KernelModuleReport[] = [];
  const relinked: KernelModule[] = [];
  hooks.emit({ kind: "phase", build: hooks.buildId, phase: "modules", total: placed.length });
  // The session knows each member by its object; a single-object module's unit is ktld's
  // own copy of the bitcode beside it.
  let incbinOf: Map<string, readonly string[]> | undefined;
  if (opts.incbinOf) {
    incbinOf = new Map();
    for (const km of placed) for (const m of km.members) {
      const files = opts.incbinOf.get(m.object);
      if (files) incbinOf.set(m.bitcode, files);
    }
  }
  // One at a time: each module's BE already fills the pool.
  for (const km of placed) {
    const b = new ModuleBuild(tree, km, opts.tools, opts.state, opts.store, opts.pool, hooks, opts.hashes, opts.reasons.get(km.name) ?? "checked", incbinOf);
    try {
      if (await b.run(records)) relinked.push(km);
    } finally {
      const r = b.report;
      if (!r.thinlink.skipped || !r.link.skipped || r.backend.compiled + r.backend.cacheHits > 0 || r.bitcode > 0) reports.push(r);
      // No room: the records stay the old ones, and the next build checks again.
      if (opts.store.roomy()) await opts.store.putMeta("kernelModules", records);
    }
  }
  const ko = (km: KernelModule) => fs.existsSync(path.join(tree.buildDir, koPath(km.object)));
  const release = () => fs.readFileSync(path.join(tree.buildDir, "include/config/kernel.release"), "utf8").trim();
  const installed = !opts.installModPath || fs.existsSync(path.join(opts.installModPath, "lib/modules", release(), "modules.dep"));
  const t0 = performance.now();
  const plan = planModulesFinal(
    { relinkedModules: relinked.length, vmlinuxRelinked: opts.vmlinuxRelinked, kosPresent: placed.every(ko), installed, kosCurrent: () => kosCurrent(tree) },
    opts.store.getMeta("modulesFinal"), () => finalInputs(tree, opts.hashes),
  );
  if (!plan.run && !plan.settle) return { modules: reports };
  if (!plan.run) {
    // vmlinux was relinked with the same symbol versions and BTF: modpost would write the
    // files it wrote, and each .ko's BTF (made against vmlinux's) would be the same bytes.
    // make compares times: the outputs are given a time after vmlinux's, as if just made.
    settleMtimes(tree.buildDir, finalOutputsAfter(tree));
    hooks.log(kbuildLine("MODPOST", `skipped: ${plan.reason}`));
    return { modules: reports, final: { ms: Math.round(performance.now() - t0), steps: [], skipped: plan.reason } };
  }
  hooks.onReplacing?.("modules");
  const final = { ...await finishModules(tree, relinked, await opts.env(), opts.jobs, hooks.log, hooks.signal), reason: plan.reason };
  opts.hashes.newEpoch();
  if (opts.store.roomy()) await opts.store.putMeta("modulesFinal", finalInputs(tree, opts.hashes));
  if (opts.installModPath) {
    section("modules_install");
    final.steps.push(...await installModules(tree, opts.installModPath, await opts.env(), hooks.log, hooks.signal));
  }
  return { modules: reports, final };
}

/** What kbuild's module steps read from vmlinux (its symbol versions, its BTF) and the .ko
 * files they left: the record that says a later run would make the same bytes. */
function finalInputs(tree: KbuildTree, hashes: HashCache): ModulesFinalRecord {
  const vmlinux = path.join(tree.buildDir, "vmlinux");
  let btf: Hash | null = null;
  try {
    const bytes = elfSection(vmlinux, ".BTF");
    btf = bytes ? hashBytes(bytes) : "none";
  } catch {
    btf = null;
  }
  const kos = Object.fromEntries(tree.kernelModules.map((km) => [koPath(km.object), hashes.get(koPath(km.object))]));
  return { symvers: hashes.get("vmlinux.symvers"), btf, kos };
}

/** Every .ko newer than its module object and `.mod.o` (nothing but vmlinux is newer). */
function kosCurrent(tree: KbuildTree): boolean {
  return tree.kernelModules.every((km) => {
    const ko = mtimeOf(path.join(tree.buildDir, koPath(km.object)));
    const inputs = [km.object, km.object.replace(/\.o$/, ".mod.o")].map((f) => mtimeOf(path.join(tree.buildDir, f)));
    return ko !== undefined && inputs.every((t) => t !== undefined && t <= ko);
  });
}

/** The targets of kbuild's module steps that name vmlinux's outputs as prerequisites, in
 * make's order: Module.symvers (modpost over vmlinux.o), then each .ko (vmlinux, for BTF). */
function finalOutputsAfter(tree: KbuildTree): (readonly [string, readonly string[]])[] {
  return [
    ["Module.symvers", ["vmlinux.o", ".vmlinux.objs", "vmlinux.symvers", "modules.order"]],
    ...tree.kernelModules.map((km) => [koPath(km.object), ["vmlinux", "Module.symvers"]] as const),
  ];
}
