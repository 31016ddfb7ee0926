// One link target (vmlinux, or one kernel module), one pipeline: its thin-link, the BE of the
// units it loaded, its native link. Each step goes through the same cycle: a key from its
// inputs, a plan against the last record (src/steps.ts: run or keep, with the reason), the
// run, the record, the report entry. vmlinux (src/build.ts) and a module (src/modulebuild.ts)
// differ only in the steps they supply.
import * as fs from "node:fs";
import * as path from "node:path";
import { BackendPhase, BackendReport, emptyBackendReport, kbuildLine } from "./backendphase";
import type { BuildContext } from "./context";
import { BuildFailure, Cancelled, KtldError } from "./base/errors";
import { Hash } from "./base/hash";
import type { LinkStepTime } from "./stepclock";
import type { BitcodeUnit } from "./kbuild/tree";
import { runProcess } from "./base/process";
import { section } from "./base/profile";
import type { ThinLinkRecord } from "./store";
import { planLink, planThinLink, StepPlan, thinLinkKey, thinLinkOutputs } from "./steps";
import type { ThinLinkOutcome } from "./thinlink";
import { killPoint } from "./base/killpoint";

/** What a once-per-target step did: how long it took, whether its plan kept the last run's
 * outputs, and the plan's reason (why it ran, or why it did not). */
export interface StepReport {
  ms: number;
  skipped: boolean;
  reason?: string;
  /** The steps it ran, each with its time (vmlinux's link: `LD vmlinux.o`, objtool, kbuild's
   * final steps). */
  steps?: LinkStepTime[];
}

export interface ThinLinkReport extends StepReport {
  /** Units whose index or imports file bytes changed. */
  indexChanged: number;
}

/** One link target's steps, the same shape for vmlinux and for each kernel module. */
export interface TargetReport {
  thinlink: ThinLinkReport;
  backend: BackendReport;
  link: StepReport;
}

export function emptyTargetReport(): TargetReport {
  return { thinlink: { ms: 0, skipped: true, indexChanged: 0 }, backend: emptyBackendReport(), link: { ms: 0, skipped: true } };
}

/** A target's thin-link: its command with its outputs under a staging dir, the bitcode it
 * reads in order, and how its outputs are moved into the tree. */
export interface ThinLinkStep {
  /** The kbuild-style line that names it (`LD`, `vmlinux.thinlto-index (N objects)`). */
  readonly banner: readonly [string, string];
  /** The staging dir's name under the state dir (one per target). */
  readonly stage: string;
  argv(stage: string): string[];
  readonly inputs: readonly string[];
  /** Moves the changed index and imports files into the tree (src/thinlink.ts). */
  publish(stage: string): ThinLinkOutcome;
}

/** A target's native link from the natives of `units`: its key, what its output is now
 * against the last record, and the run. */
export interface LinkStep {
  readonly key: Hash;
  /** The output's name in the reason (`vmlinux`, `fs/ext4/ext4.o`). */
  readonly output: string;
  state(): "as made" | "missing" | "changed";
  /** Returns the steps it ran, timed, when it knows them. */
  run(): Promise<LinkStepTime[] | void>;
}

export interface LinkTarget {
  readonly name: string;
  /** The units its BE may be asked about, by their bitcode's path. */
  readonly units: ReadonlyMap<string, BitcodeUnit>;
  readonly thinLink: ThinLinkStep;
  /** What its last thin-link and link recorded. */
  readonly last: { readonly thinlink?: ThinLinkRecord; readonly linkKey?: Hash };
  /** The thin-link ran: its record (written now, or with the target's other records). */
  recordThinLink(rec: ThinLinkRecord): Promise<unknown>;
  linkStep(units: readonly string[]): LinkStep;
}

/** What a target's pipeline left: the units its thin-link loaded, that thin-link's record,
 * and the key of the link it ran (undefined: the link's output was current). */
export interface TargetOutcome {
  readonly units: readonly string[];
  readonly thinlink: ThinLinkRecord;
  readonly linked?: Hash;
}

const ms = (t0: number) => Math.round(performance.now() - t0);

/** Runs `ld.lld --thinlto-index-only` into the target's staging dir and publishes what
 * changed. A missing tool is the environment's fault (exit 2); a failing thin-link is a
 * failed build (exit 1) with lld's output. */
async function runThinLink(ctx: BuildContext, step: ThinLinkStep): Promise<ThinLinkOutcome> {
  const stage = ctx.state.stagingDir(step.stage);
  ctx.log(kbuildLine(step.banner[0], step.banner[1]));
  const r = await runProcess(step.argv(stage), { cwd: ctx.buildDir, signal: ctx.signal, timeoutMs: 10 * 60_000, tool: "thin-link" });
  section("publish index files");
  if (r.cancelled) throw new Cancelled();
  if (r.error) throw new KtldError(r.error);
  if (r.timedOut) throw new BuildFailure("thin-link", r.output, `${step.banner[1]}: no result after 10 minutes`);
  if (r.code !== 0) {
    const onTmpfs = !stage.startsWith(ctx.state.dir + "/");
    const full = !/No space left on device/.test(r.output) ? undefined
      : onTmpfs ? `no space left on ${path.dirname(stage)} (tmpfs) for the thin-link's index files; free some, or set KTLD_STAGE_TMPFS=0 to keep them under the state dir`
        : `no space left on the device of the state dir ${ctx.state.dir}; free some space or pass --state-dir DIR`;
    throw new BuildFailure("thin-link", r.output, full);
  }
  killPoint("thin-link:before-publish");
  const outcome = step.publish(stage);
  fs.rmSync(stage, { recursive: true, force: true });
  return outcome;
}

/** The target's thin-link (or the last one kept), the BE of what it loaded, the link. */
export async function runTarget(ctx: BuildContext, t: LinkTarget, report: TargetReport): Promise<TargetOutcome> {
  const hashOf = (f: string) => ctx.hashes.get(f);
  section("thin-link key");
  const key = thinLinkKey(t.thinLink.argv("<stage>"), t.thinLink.inputs, hashOf);
  const plan = planThinLink(t.last.thinlink, key, (units) => thinLinkOutputs(units, hashOf));
  let thinlink: ThinLinkRecord;
  if (plan.run) {
    const t0 = performance.now();
    ctx.emit({ kind: "phase", build: ctx.id, phase: "thin-link", total: 1 });
    const out = await runThinLink(ctx, t.thinLink);
    // The thin-link rewrote index files hashed above: they are looked at afresh.
    ctx.hashes.newEpoch();
    thinlink = { key, units: out.modules, outputs: thinLinkOutputs(out.modules, hashOf) };
    report.thinlink = { ms: ms(t0), skipped: false, indexChanged: out.changed.size, reason: plan.reason };
    section("thin-link record");
    killPoint("thin-link:before-record");
    await t.recordThinLink(thinlink);
  } else {
    thinlink = t.last.thinlink!;
    report.thinlink = { ...report.thinlink, skipped: true, reason: plan.reason };
  }
  ctx.checkCancelled();
  await new BackendPhase(ctx, t.units).run(thinlink.units, report.backend);
  ctx.checkCancelled();
  section("link key");
  const t0 = performance.now();
  const link = t.linkStep(thinlink.units);
  const linkPlan: StepPlan = planLink(t.last.linkKey, link.key, link.state(), link.output);
  if (!linkPlan.run) {
    report.link = { ms: ms(t0), skipped: true, reason: linkPlan.reason };
    return { units: thinlink.units, thinlink };
  }
  const steps = await link.run();
  ctx.hashes.newEpoch();
  report.link = { ms: ms(t0), skipped: false, reason: linkPlan.reason, ...(steps ? { steps } : {}) };
  return { units: thinlink.units, thinlink, linked: link.key };
}
