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
import { kbuildLine } from "./backendphase";
import type { BuildContext } from "./context";
import { BuildFailure, Cancelled } from "./base/errors";
import { elfSection } from "./elf";
import { Hash, HashCache, hashBytes } from "./base/hash";
import { mtimeOf, settleMtimes } from "./kbuild/dist";
import { KernelModule, moduleLinkArgv, moduleThinLinkArgv, singleCompileCommand } from "./kbuild/modules";
import { readCmdFile } from "./kbuild/cmdfile";
import type { KbuildTree } from "./kbuild/tree";
import { section } from "./base/profile";
import { runProcess, runStep } from "./base/process";
import { ModulesFinalRecord, ModuleTargetRecord } from "./store";
import { linkKey, planModulesFinal } from "./steps";
import { emptyTargetReport, LinkTarget, runTarget, TargetReport } from "./target";
import { publishStaged } from "./thinlink";

/** What one kernel module's build did: its link target's steps (src/target.ts). */
export interface KernelModuleReport extends TargetReport {
  readonly name: string;
  /** `fs/ext4/ext4.ko` */
  readonly ko: string;
  /** Why the module was looked at in this build. */
  reason: string;
  /** Units whose bitcode ktld compiled first (a single-object module's, after make). */
  bitcode: number;
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
  return { name: km.name, ko: koPath(km.object), reason, bitcode: 0, ...emptyTargetReport() };
}

/** The module object as ktld last made it. */
function linked(km: KernelModule, rec: ModuleTargetRecord | undefined, hashes: HashCache): boolean {
  return rec?.link !== undefined && hashes.get(km.object) === rec.link.object;
}

/** A single-object module after make has no bitcode (its rule links in place): compiled
 * into ktld's file, from kbuild's recorded command. Returns how many were compiled. */
async function ensureBitcode(ctx: BuildContext, km: KernelModule, rec: ModuleTargetRecord | undefined): Promise<number> {
  const dir = ctx.buildDir;
  // A single-object module's object that is not the one ktld last linked was remade by
  // kbuild (make modules, a hand-over): its compile may have seen other sources than ktld's
  // bitcode file did. Without a record ktld cannot tell: compiled again too.
  const remade = km.single && (rec?.link === undefined || ctx.hashes.get(km.object) !== rec.link.object);
  const missing = km.members.filter((m) => !m.native && (remade || !fs.existsSync(path.join(dir, m.bitcode))));
  await Promise.all(missing.map(async (m) => {
    const cmd = readCmdFile(dir, m.object);
    const command = m.bitcode === m.object ? cmd.command : singleCompileCommand(cmd, m.bitcode);
    if (!command) throw new BuildFailure("FE", `${m.object}: its recorded compile does not name its output; run make modules`);
    const res = await ctx.pool.run({ argv: ["/bin/sh", "-c", command], cwd: dir, output: path.join(dir, m.bitcode) }, ctx.signal, "FE compile");
    ctx.checkCancelled();
    ctx.log(kbuildLine("CC [M]", m.bitcode === m.object ? m.object : `${m.object} (bitcode)`));
    if (res.code !== 0 || res.error) throw new BuildFailure("FE", `${m.object}: ${res.error ?? "compile failed"}\n${res.diagnostics}`);
    const depfile = /-Wp,-MMD,(\S+)/.exec(command)?.[1];
    if (depfile) fs.rmSync(path.join(dir, depfile), { force: true });
  }));
  if (missing.length) ctx.hashes.newEpoch();
  return missing.length;
}

/** One kernel module as a link target: its thin-link over its bitcode members (`ld.lld -r
 * --thinlto-index-only`), its link the module object from the natives in kbuild's member
 * order with kbuild's `ld -r` flags, then objtool as kbuild runs it. Its records go into
 * `records` (written once for all modules). */
function moduleTarget(ctx: BuildContext, km: KernelModule, records: Record<string, ModuleTargetRecord>): LinkTarget {
  const rec = records[km.name];
  const hashOf = (f: string) => ctx.hashes.get(f);
  return {
    name: km.name,
    units: ctx.tree.moduleUnits,
    thinLink: {
      banner: ["LD [M]", `${km.object}.thinlto-index (${km.members.length} objects)`],
      stage: `stage-${km.name}`,
      argv: (stage) => moduleThinLinkArgv(km, stage, path.join(stage, "module.thinlto-index")),
      inputs: km.members.map((m) => m.bitcode),
      publish: (stage) => publishStaged(ctx.buildDir, km.members.filter((m) => !m.native).map((m) => m.bitcode), stage, path.join(stage, "module.thinlto-index"), ctx.hashes),
    },
    last: { thinlink: rec?.thinlink, linkKey: rec?.link?.key },
    recordThinLink: async () => undefined,
    linkStep: (units) => {
      const loaded = new Set(units);
      const inputs = km.members.flatMap((m) => (m.native ? [m.object] : loaded.has(m.bitcode) ? [nativePath(m.bitcode)] : []));
      const argv = moduleLinkArgv(km, inputs, km.object);
      return {
        key: linkKey(argv, inputs, km.link!.after, hashOf),
        output: km.object,
        state: () => {
          const now = hashOf(km.object);
          return now === null || now === undefined ? "missing" : linked(km, rec, ctx.hashes) ? "as made" : "changed";
        },
        run: async () => {
          ctx.log(kbuildLine("LD [M]", km.object));
          await runStep(ctx.buildDir, argv, undefined, `LD [M] ${km.object}`, ctx.signal);
          if (km.link!.after) await runStep(ctx.buildDir, ["/bin/sh", "-c", km.link!.after], undefined, `objtool ${km.object}`, ctx.signal);
        },
      };
    },
  };
}

/** One kernel module's pipeline; returns whether its module object was (re)linked. */
async function buildModule(ctx: BuildContext, km: KernelModule, records: Record<string, ModuleTargetRecord>, report: KernelModuleReport): Promise<boolean> {
  section(`module ${km.name}`);
  report.bitcode = await ensureBitcode(ctx, km, records[km.name]);
  ctx.checkCancelled();
  const out = await runTarget(ctx, moduleTarget(ctx, km, records), report);
  const objectKey = out.linked ?? records[km.name]?.link?.key;
  records[km.name] = { thinlink: out.thinlink, link: objectKey === undefined ? undefined : { key: objectKey, object: ctx.hashes.get(km.object) } };
  await ctx.writer.settle();
  return out.linked !== undefined;
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
export async function buildKernelModules(ctx: BuildContext, opts: {
  vmlinuxRelinked: boolean; reasons: ReadonlyMap<string, string>;
  /** Install the modules there after each change (`make modules_install INSTALL_MOD_PATH=`). */
  installModPath?: string;
}): Promise<{ modules: KernelModuleReport[]; final?: ModulesFinalReport }> {
  const { tree, store } = ctx;
  const { placed } = placedModules(tree);
  if (!tree.kernelModules.length) return { modules: [] };
  // Files may have changed since the hashes were last looked at (FE replays, a vmlinux build).
  ctx.hashes.newEpoch();
  const records = { ...(store.getMeta("kernelModules") ?? {}) };
  const reports: KernelModuleReport[] = [];
  const relinked: KernelModule[] = [];
  ctx.emit({ kind: "phase", build: ctx.id, phase: "modules", total: placed.length });
  // The session knows each member by its object; a single-object module's unit is ktld's
  // own copy of the bitcode beside it.
  let mctx = ctx;
  if (ctx.incbinOf) {
    const incbinOf = new Map<string, readonly string[]>();
    for (const km of placed) for (const m of km.members) {
      const files = ctx.incbinOf.get(m.object);
      if (files) incbinOf.set(m.bitcode, files);
    }
    mctx = ctx.with({ incbinOf });
  }
  // One at a time: each module's BE already fills the pool.
  for (const km of placed) {
    const r = emptyModuleReport(km, opts.reasons.get(km.name) ?? "checked");
    try {
      if (await buildModule(mctx, km, records, r)) relinked.push(km);
    } finally {
      if (!r.thinlink.skipped || !r.link.skipped || r.backend.compiled + r.backend.cacheHits > 0 || r.bitcode > 0) reports.push(r);
      // No room: the records stay the old ones, and the next build checks again.
      await ctx.writer.write(() => store.putMeta("kernelModules", records));
    }
  }
  const ko = (km: KernelModule) => fs.existsSync(path.join(tree.buildDir, koPath(km.object)));
  const release = () => fs.readFileSync(path.join(tree.buildDir, "include/config/kernel.release"), "utf8").trim();
  const installed = !opts.installModPath || fs.existsSync(path.join(opts.installModPath, "lib/modules", release(), "modules.dep"));
  const t0 = performance.now();
  const plan = planModulesFinal(
    { relinkedModules: relinked.length, vmlinuxRelinked: opts.vmlinuxRelinked, kosPresent: placed.every(ko), installed, kosCurrent: () => kosCurrent(tree) },
    store.getMeta("modulesFinal"), () => finalInputs(tree, ctx.hashes),
  );
  if (!plan.run && !plan.settle) return { modules: reports };
  if (!plan.run) {
    // vmlinux was relinked with the same symbol versions and BTF: modpost would write the
    // files it wrote, and each .ko's BTF (made against vmlinux's) would be the same bytes.
    // make compares times: the outputs are given a time after vmlinux's, as if just made.
    settleMtimes(tree.buildDir, finalOutputsAfter(tree));
    ctx.log(kbuildLine("MODPOST", `skipped: ${plan.reason}`));
    return { modules: reports, final: { ms: Math.round(performance.now() - t0), steps: [], skipped: plan.reason } };
  }
  ctx.hooks.onReplacing?.("modules");
  const final = { ...await finishModules(tree, relinked, await ctx.env(), ctx.jobs, ctx.log, ctx.signal), reason: plan.reason };
  ctx.hashes.newEpoch();
  await ctx.writer.write(() => store.putMeta("modulesFinal", finalInputs(tree, ctx.hashes)));
  if (opts.installModPath) {
    section("modules_install");
    final.steps.push(...await installModules(tree, opts.installModPath, await ctx.env(), ctx.log, ctx.signal));
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
