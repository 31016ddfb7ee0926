// `ktld why TARGET`: the newest build in the history that did something to a target, and the
// decision of every step the target went through in it, with its reason. Pure: over typed
// history entries, newest first.
//
// - `vmlinux` (or `vmlinux.o`): the newest build that relinked it; its thin-link, BE and link;
//   and, when later builds kept it, why the newest of them did.
// - a kernel module (`fs/ext4/ext4.ko` or its object): the newest build that looked at it; its
//   thin-link, BE, module link, and kbuild's module steps of that build.
// - a bitcode unit (`kernel/fork.o`, or a module's member): the newest build that ran its FE
//   or BE; its FE, its target's thin-link, its BE, its target's link.
import type { BackendJson, HistoryJson, JobJson, KernelModuleJson, StepJson, TargetJson, WhyResult, WhyStep } from "./protocol";

/** The targets whose decisions are the link's rather than a job's. */
export const LINK_TARGETS: ReadonlySet<string> = new Set(["vmlinux", "vmlinux.o"]);

/** What the tree says of an object: the kernel module it belongs to (by name), and the
 * bitcode unit its BE jobs are named by (a single-object module's is ktld's bitcode file). */
export interface ModuleOf {
  readonly name: string;
  /** The object asked about is the module itself (its `.ko` or its object). */
  readonly whole: boolean;
  readonly unit: string;
}

function stepOf(step: WhyStep["step"], s: StepJson | undefined, ranWord: string, keptWord: string): WhyStep | undefined {
  if (!s) return undefined;
  return { step, ran: !s.skipped, reason: s.reason ?? (s.skipped ? keptWord : ranWord) };
}

function backendStep(b: BackendJson | undefined): WhyStep | undefined {
  if (!b) return undefined;
  const units = b.units ?? b.modules;
  return { step: "BE", ran: b.compiled + b.cacheHits > 0, reason: `${b.compiled} compiled, ${b.cacheHits} from the cache, ${b.unchanged} of ${units} unchanged` };
}

function jobStep(j: JobJson | undefined): WhyStep | undefined {
  if (!j) return undefined;
  return { step: "BE", ran: true, reason: `${j.action === "restore" ? "restored" : "compiled"}: ${j.reason}` };
}

/** The steps inside a link that ktld decided: how vmlinux.o was linked (kbuild's command, or
 * without the sections the final link discards), the BTF (reused, or pahole ran). */
function linkDecisions(link: StepJson | undefined): WhyStep[] {
  const out: WhyStep[] = [];
  for (const s of link?.steps ?? []) {
    if (!s.reason) continue;
    if (s.name === "LD vmlinux.o") out.push({ step: "vmlinux.o", ran: true, reason: s.reason });
    else if (s.name.startsWith("BTF ")) out.push({ step: "BTF", ran: !s.reason.startsWith("reused"), reason: s.reason });
    else if (s.name === "kallsyms") out.push({ step: "kallsyms", ran: true, reason: s.reason });
  }
  return out;
}

/** A target's thin-link, BE and link (with the decisions inside it), as one build's report has them. */
function targetSteps(t: TargetJson, be?: WhyStep): WhyStep[] {
  return [
    stepOf("thin-link", t.thinlink, "ran", "kept"),
    be ?? backendStep(t.backend),
    stepOf("link", t.link, "ran", "kept"),
    ...linkDecisions(t.link),
  ].filter((s): s is WhyStep => s !== undefined);
}

function present<T>(x: T | undefined | null): x is T {
  return x !== undefined && x !== null;
}

function whyVmlinux(object: string, history: readonly HistoryJson[]): WhyResult {
  const linkOf = (h: HistoryJson) => h.report?.link;
  const newest = history.find((h) => linkOf(h));
  const kept = newest && linkOf(newest)?.skipped ? { build: newest.id, reason: linkOf(newest)?.reason ?? "no link input changed" } : undefined;
  const linked = history.find((h) => h.ok && linkOf(h)?.skipped === false);
  if (!linked) return { object, build: null, steps: [], reason: "not relinked by any recent build", ...(kept ? { kept } : {}) };
  const r = linked.report;
  return {
    object, build: linked.id, trigger: linked.trigger,
    steps: targetSteps(r),
    ...(r.thinlink ? { thinlink: { ms: r.thinlink.ms, skipped: !!r.thinlink.skipped, indexChanged: r.thinlink.indexChanged, ...(r.thinlink.reason ? { reason: r.thinlink.reason } : {}) } } : {}),
    link: { ms: r.link.ms, skipped: false, ...(r.link.reason ? { reason: r.link.reason } : {}) },
    ...(kept && kept.build !== linked.id ? { kept } : {}),
    ...(linked.boot ? { boot: linked.boot } : {}),
  };
}

function modulesFinalStep(h: HistoryJson): WhyStep | undefined {
  const f = h.report.modulesFinal;
  if (!f) return undefined;
  return f.skipped !== undefined
    ? { step: "modules", ran: false, reason: `kbuild's module steps skipped: ${f.skipped}` }
    : { step: "modules", ran: true, reason: `kbuild's module steps ran${f.reason ? `: ${f.reason}` : ""} (${f.steps.length} steps)` };
}

export function why(object: string, history: readonly HistoryJson[], moduleOf: (object: string) => ModuleOf | undefined): WhyResult {
  if (LINK_TARGETS.has(object)) return whyVmlinux(object, history);
  const km = moduleOf(object);
  for (const h of history) {
    const rep = h.report;
    if (!rep) continue;
    const fe = rep.frontendJobs?.find((j) => j.object === object);
    const kmRep: KernelModuleJson | undefined = km ? rep.kernelModules?.find((m) => m.name === km.name) : undefined;
    const target: TargetJson | undefined = km ? kmRep : rep;
    const be = km ? kmRep?.backend.jobs.find((j) => j.object === km.unit) : rep.backend?.jobs?.find((j) => j.object === object);
    if (!fe && !be && !(km?.whole && kmRep)) continue;
    const feStep: WhyStep | undefined = fe && { step: "FE", ran: true, reason: `${fe.reason}${fe.changed ? "" : " (bitcode unchanged: stopped there)"}` };
    // A unit whose bitcode did not change went no further than its FE.
    const steps = fe && !fe.changed && !be ? [feStep] : [feStep, ...(target ? targetSteps(target, km?.whole ? undefined : jobStep(be) ?? { step: "BE", ran: false, reason: "its native was current" }) : [])];
    if (km && kmRep) steps.push(modulesFinalStep(h));
    return {
      object, build: h.id, trigger: h.trigger, steps: steps.filter(present),
      frontend: fe ?? null, backend: be ?? null,
      ...(kmRep ? { kernelModule: kmRep } : {}),
      ...(h.boot ? { boot: h.boot } : {}),
    };
  }
  return { object, build: null, steps: [], reason: "not rebuilt by any recent build: none of its inputs changed" };
}

/** The text of `ktld why` (without --json). */
export function whyText(w: WhyResult): string[] {
  const keptLine = w.kept ? [`  kept since: build #${w.kept.build} did not ${LINK_TARGETS.has(w.object) ? "relink" : "rebuild"} it (${w.kept.reason})`] : [];
  if (w.build === null) return [`${w.object}: ${w.reason}`, ...keptLine];
  const verb = LINK_TARGETS.has(w.object) ? "relinked" : "rebuilt";
  return [
    `${w.object}: ${verb} by build #${w.build} (triggered by ${(w.trigger ?? []).join(", ") || "?"})`,
    ...w.steps.map((s) => `  ${s.step}: ${s.step === "BTF" || s.step === "vmlinux.o" || s.step === "kallsyms" ? "" : `${s.ran ? "ran" : "kept"}: `}${s.reason}${s.step === "thin-link" && w.thinlink?.indexChanged !== undefined && s.ran ? ` (${w.thinlink.indexChanged} index files changed)` : ""}`),
    ...keptLine,
    ...(w.wrapper ? [`  compiler wrapper: ${w.wrapper}`] : []),
  ];
}
