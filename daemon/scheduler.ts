// The build scheduler: which changes go into which build, one build at a time; each build's
// history record, and the boot of each fresh kernel. The socket server (daemon.ts) asks it
// for builds and reads its state; it knows nothing of sockets.
import * as fs from "node:fs";
import * as path from "node:path";
import { BuildReport, Replaced } from "../src/build";
import { StoreWriter } from "../src/context";
import { Cancelled } from "../src/base/errors";
import { foreignMakesIn } from "../src/base/process";
import { DaemonEvent } from "../src/protocol";
import { endProfile, section, startProfile } from "../src/base/profile";
import { jsonReport, reportFromJson } from "../src/report";
import { Session, SessionBuildResult, WatchKind } from "../src/session";
import { StateDir } from "../src/state";
import { BootJson, BuildHistoryEntry, Store } from "../src/store";
import { boot, bootJson, BootOptions } from "../src/boot";

export type DaemonState = "starting" | "idle" | "building" | "failed" | "stopping";

/** Builds kept in the history. */
export const HISTORY_KEEP = 50;

export interface SchedulerOptions {
  readonly state: StateDir;
  readonly store: Store;
  readonly settleMs: number;
  /** `--boot`: every fresh kernel is booted in qemu and gets a verdict. */
  readonly boot?: Pick<BootOptions, "run" | "timeoutMs" | "memoryMiB" | "append">;
}

/** What the scheduler needs of the daemon around it. */
export interface SchedulerHooks {
  log(msg: string): void;
  broadcast(e: DaemonEvent): void;
  state(): DaemonState;
  setState(s: DaemonState): void;
  /** Every change made before now has been seen (false: the watcher could not tell). */
  syncWatcher(): Promise<boolean>;
  /** kbuild changed the tree: watch what it is now. */
  restartWatcher(): Promise<void>;
  /** Work nobody awaits: a failure is logged, never an unhandled rejection. */
  background(p: Promise<unknown>, what: string): void;
  /** A build ended (idle timers, garbage collection). */
  afterBuild(): void;
}

export type BuildResult = SessionBuildResult & { id: number };

/** A boot that is due, and why (status: "waiting"). */
export interface BootWaiting {
  readonly build: number;
  readonly why: string;
}

/** The build made something new for a boot to read: it linked vmlinux, or kbuild's final
 * module link wrote a `.ko` (its lines, `LD [M]  fs/ext4/ext4.ko`). */
export function madeNewKernel(r: Pick<BuildReport, "ok" | "link" | "modulesFinal">): boolean {
  return r.ok && ((r.link.ms > 0 && !r.link.skipped) || (r.modulesFinal?.steps ?? []).some((l) => /\.ko$/.test(l)));
}

/** Which kernel to boot once a build (not cancelled) ends, and why. Pure.
 * - the build made a new kernel: boot it (a boot of the old one was cancelled when the
 *   build began to replace it);
 * - a boot was cancelled for this build and it made nothing new: boot the kernel on disk
 *   again, as of this build (or, after a no-op build, of the build that made it);
 * - the build failed: no boot (the kernel on disk is not whole); what was due is dropped;
 * - otherwise the running boot, or the last verdict, stands. */
export function planBoot(b: { build: number; ok: boolean; newKernel: boolean; due: boolean; booting: boolean }): { boot?: number; reason: string } {
  if (!b.ok) return { reason: b.due ? `no boot: build #${b.build} failed, its kernel is not whole` : "" };
  if (b.newKernel) return { boot: b.build, reason: "the fresh kernel" };
  if (b.due && !b.booting) return { boot: b.build, reason: `the kernel on disk again (its boot was cancelled and build #${b.build} made nothing new)` };
  return { reason: "" };
}

export class BuildScheduler {
  readonly pending = new Map<string, WatchKind>();
  private settleTimer?: NodeJS.Timeout;
  current?: { id: number; abort: AbortController; done: Promise<SessionBuildResult>; phase: string };
  private nextBuildId: number;
  last?: BuildResult;
  stale = false;
  /** Files of a failed build: their changes were not committed, so every later build
   * looks at them again until one succeeds. */
  private retry = new Map<string, WatchKind>();
  private retryAll = false;
  /** The boot of a fresh kernel in flight, and the last verdict. */
  booting?: { build: number; abort: AbortController; done: Promise<void> };
  lastBoot?: BootJson & { build: number };
  /** A boot is due: a build that is making a new kernel stopped the boot of the old one. */
  private waiting?: BootWaiting;
  /** A boot was cancelled by a build that may yet make nothing new: the kernel on disk is
   * booted again then (planBoot). */
  private rebootDue = false;

  /** The history's writer: a record that finds no room is said once and skipped. */
  private readonly writer: StoreWriter;

  constructor(private readonly session: Session, private readonly opts: SchedulerOptions, private readonly hooks: SchedulerHooks) {
    this.writer = new StoreWriter(opts.store, opts.state.dir, (l) => hooks.log(`[DAEMON] ${l}`));
    const newest = opts.store.recentBuilds(1)[0];
    this.nextBuildId = (newest?.id ?? 0) + 1;
    if (newest) {
      // The last build of an earlier run stands until something changes.
      this.last = { id: newest.id, report: reportFromJson(newest.report), changes: [], frontendJobs: [], kbuild: [], notHandled: newest.report.notHandled ?? [], noop: false };
      this.stale = !newest.ok;
    }
  }

  onChange(file: string, kind: WatchKind): void {
    this.pending.set(file, kind);
    // A newer change cancels a build still compiling: its result would be stale anyway.
    if (this.current && (this.current.phase === "FE" || this.current.phase === "BE")) {
      this.hooks.log(`[BUILD] #${this.current.id}: cancelled by a change of ${path.relative(this.session.buildDir, file)}`);
      this.current.abort.abort();
    }
    this.schedule();
  }

  private schedule(): void {
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => this.hooks.background(this.settled(), "a build after changes"), this.opts.settleMs);
  }


  private gitBusy(): boolean {
    return fs.existsSync(path.join(this.session.tree.srcTree, ".git/index.lock"));
  }

  private async settled(): Promise<void> {
    if (this.current || this.hooks.state() === "stopping") return; // runBuildNow reschedules when done
    if (this.gitBusy()) {
      this.schedule(); // hold while git is rewriting the tree
      return;
    }
    if (this.pending.size === 0) return;
    await this.runBuild("pending", []);
  }

  /** Runs one build of the pending changes (or a full scan), after making sure every
   * change made before now has been seen. */
  /** Builds run one at a time, in the order asked for. */
  private chain: Promise<unknown> = Promise.resolve();

  runBuild(what: "pending" | "all", trigger: string[], record = false): Promise<SessionBuildResult & { id: number }> {
    const next = this.chain.then(() => this.runBuildNow(what, trigger, record));
    this.chain = next.catch(() => undefined);
    return next;
  }

  /** Holds while a make ktld did not start runs in the build dir (the user's own): both would
   * write the same objects, `vmlinux.o` and `vmlinux`. What it changes is seen after it ends. */
  private async untilForeignMakeEnds(): Promise<void> {
    let said = false;
    for (;;) {
      const pids = foreignMakesIn([this.session.buildDir, this.session.tree.srcTree], this.opts.state.childLedger);
      if (!pids.length || this.hooks.state() === "stopping") break;
      if (!said) this.hooks.log(`[DAEMON] a make ktld did not start (pid ${pids.join(", ")}) is running in the build dir: waiting for it to end before building`);
      said = true;
      await new Promise((r) => setTimeout(r, 500));
    }
    if (said) this.hooks.log("[DAEMON] that make ended: building");
  }

  private async runBuildNow(what: "pending" | "all", trigger: string[], record: boolean): Promise<SessionBuildResult & { id: number }> {
    // A build queued behind the one a stop cancelled: the daemon is going away.
    if (this.hooks.state() === "stopping") throw new Cancelled();
    await this.untilForeignMakeEnds();
    if (this.hooks.state() === "stopping") throw new Cancelled();
    const profile = startProfile();
    section("watcher sync");
    const synced = await this.hooks.syncWatcher();
    let candidates: ReadonlyMap<string, WatchKind> | "all" = "all";
    if (!synced) this.hooks.log("[WATCHER] the cookie was not seen in time: scanning every input file");
    if (what === "pending" && synced && !this.retryAll) candidates = new Map([...this.retry, ...this.pending]);
    const files = what === "pending" ? [...this.pending.keys()] : [];
    const given = candidates;
    this.pending.clear();
    const id = this.nextBuildId++;
    const abort = new AbortController();
    const startedAt = Date.now();
    const triggerNames = trigger.length ? trigger : files.map((f) => path.relative(this.session.buildDir, f));
    const entry = { id, abort, phase: "scan", done: undefined as unknown as Promise<SessionBuildResult> };
    this.current = entry;
    this.hooks.setState("building");
    const done = this.session.build(candidates, {
      buildId: id,
      signal: abort.signal,
      changedMeanwhile: () => this.pending.keys(),
      // The boot of the kernel on disk stops only when this build starts to overwrite it.
      onReplacing: (what) => this.replacing(id, what),
      log: (line) => this.hooks.log(`[BUILD] ${line}`),
      onEvent: (e) => {
        if (e.kind === "phase") entry.phase = e.phase;
        this.hooks.broadcast(e);
      },
    });
    entry.done = done;
    let result: SessionBuildResult;
    try {
      result = await done;
      // kbuild changed the tree: its new graph's directories are watched before this build
      // ends, so that a client answered with it, and saving next, is seen by a watcher.
      if (result.kbuild.length) await this.hooks.restartWatcher();
    } finally {
      this.current = undefined;
    }
    const r = result.report;
    // The profile ends with the build's own work (its history record comes after).
    r.profile = endProfile(profile);
    const didWork = r.frontend.compiled > 0 || result.kbuild.length > 0 || r.backend.modules > 0 || !r.ok || (r.kernelModules?.length ?? 0) > 0;
    if (didWork || (what === "pending" && !result.noop)) {
      this.hooks.log(`[BUILD] #${id} ${r.ok ? "ok" : `FAILED: ${r.error}`} in ${r.ms} ms: FE ${r.frontend.compiled}, BE ${r.backend.compiled} run/${r.backend.cacheHits} cached/${r.backend.unchanged} unchanged${r.link.ms && !r.link.skipped ? `, linked (vmlinux fresh at ${r.vmlinuxReadyMs ?? r.ms} ms)` : ""}${r.kernelModules?.length ? `, modules ${r.kernelModules.map((m) => `${m.name} (BE ${m.backend.compiled} run/${m.backend.cacheHits} cached)`).join(", ")}` : ""}`);
    }
    if (!result.noop && result.changes.length) {
      const shown = result.changes.slice(0, 8).map((c) => `${path.relative(this.session.buildDir, c.file)} ${c.kind}`);
      this.hooks.log(`[BUILD] #${id} changes: ${shown.join(", ")}${result.changes.length > 8 ? ` (+${result.changes.length - 8} more)` : ""}`);
    }
    if (r.diagnostics) this.hooks.log(`[BUILD] #${id} diagnostics:\n${r.diagnostics.trimEnd()}`);
    const cancelled = !r.ok && /^cancelled/.test(r.error ?? "");
    if (result.noop && this.last && !this.stale && !record) {
      // Nothing had changed (a touch, a save of the same bytes): the last build stands.
      // Its id is not given back: a client that saw the build's events knows it by that id.
      this.hooks.log(`[BUILD] #${id} no content change: nothing to do`);
      // It ends for the TUI too (its phases were shown), and it touches no boot.
      this.hooks.broadcast({ kind: "build-end", build: id, ok: true, noop: true, summary: jsonReport(r) });
      this.afterBuildBoot(this.waiting?.build ?? this.last.id, { ok: true, newKernel: false });
      this.hooks.setState(this.stale ? "failed" : "idle");
      if (this.pending.size) this.schedule();
      this.hooks.afterBuild();
      return this.last;
    }
    if (!cancelled) {
      this.stale = !r.ok;
      if (r.ok) {
        this.retry.clear();
        this.retryAll = false;
      } else if (given === "all") {
        this.retryAll = true;
      } else {
        for (const [f, k] of given) this.retry.set(f, k);
      }
      this.last = { ...result, id };
      const h: BuildHistoryEntry = {
        id, startedAt, trigger: triggerNames, ok: r.ok,
        report: { ...jsonReport(r), changes: result.changes.map((c) => ({ ...c, file: path.relative(this.session.buildDir, c.file) })), frontendJobs: result.frontendJobs, kbuild: result.kbuild, notHandled: result.notHandled },
      };
      await this.writer.write(() => this.opts.store.appendBuild(h, HISTORY_KEEP));
    } else {
      // What the cancelled build was given is still to do.
      for (const f of files) if (!this.pending.has(f)) this.pending.set(f, "change");
    }
    this.hooks.broadcast({ kind: "build-end", build: id, ok: r.ok, summary: jsonReport(r) });
    if (!cancelled) this.afterBuildBoot(id, { ok: r.ok, newKernel: madeNewKernel(r) });
    this.hooks.setState(cancelled ? "building" : r.ok ? "idle" : "failed");
    if (this.pending.size) this.schedule();
    else if (cancelled) this.hooks.setState("idle");
    this.hooks.afterBuild();
    return { ...result, id };
  }

  /** A build is about to overwrite what the running boot reads: that boot is of a kernel
   * about to be replaced, so it stops, and a boot is due for what this build makes. */
  private replacing(id: number, what: Replaced): void {
    if (!this.opts.boot) return;
    if (this.booting) {
      this.cancelBoot(`build #${id} replaces ${what === "vmlinux" ? "vmlinux" : "the .ko files"}`);
      this.rebootDue = true;
    }
    this.waiting ??= { build: id, why: `build #${id} is making a new kernel` };
  }

  /** After a build that was not cancelled: boot what it says (see planBoot). */
  private afterBuildBoot(id: number, b: { ok: boolean; newKernel: boolean }): void {
    if (!this.opts.boot) return;
    const plan = planBoot({ ...b, build: id, due: this.rebootDue, booting: this.booting !== undefined });
    this.waiting = undefined;
    this.rebootDue = false;
    if (plan.boot === undefined) {
      if (plan.reason) this.hooks.log(`[BOOT] ${plan.reason}`);
      return;
    }
    this.startBoot(plan.boot, plan.reason);
  }

  /** Boots build `id`'s kernel beside whatever comes next: a boot never delays a build, and
   * a build that replaces the kernel cancels it. The verdict goes into that build's history record. */
  private startBoot(id: number, why: string): void {
    const abort = new AbortController();
    this.hooks.broadcast({ kind: "boot-start", build: id });
    this.hooks.log(`[BOOT] #${id}: booting ${why}${this.opts.boot!.run ? ` to run ${this.opts.boot!.run}` : ""}`);
    const done = boot({ ...this.opts.boot!, buildDir: this.session.buildDir, workDir: path.join(this.opts.state.dir, "boot"), signal: abort.signal })
      .then(async (r) => {
        const b = { ...bootJson(r), build: id };
        this.hooks.log(`[BOOT] #${id}: ${r.verdict} in ${(r.ms / 1000).toFixed(1)} s (${r.accel}): ${r.detail}`);
        if (r.verdict !== "cancelled") this.lastBoot = b;
        const h = this.opts.store.build(id);
        if (h) await this.writer.write(() => this.opts.store.putBuild({ ...h, boot: bootJson(r) }));
        this.hooks.broadcast({ kind: "boot-end", build: id, boot: b });
      })
      .finally(() => {
        if (this.booting?.abort === abort) this.booting = undefined;
      });
    this.booting = { build: id, abort, done };
    this.hooks.background(done, `the boot of build #${id}`);
  }

  private cancelBoot(why: string): void {
    if (!this.booting) return;
    this.hooks.log(`[BOOT] #${this.booting.build}: cancelled (${why})`);
    this.booting.abort.abort();
  }

  /** The boot panel's state: the boot running, the one due (a build is making the kernel
   * it will boot), the last verdict. */
  bootStatus(): { running: number | null; waiting: BootWaiting | null; last: (BootJson & { build: number }) | null } {
    return { running: this.booting?.build ?? null, waiting: this.booting ? null : this.waiting ?? null, last: this.lastBoot ?? null };
  }

  /** Until no build runs: the whole of each (its watcher restart and history record
   * included), not just the session's part. */
  async untilIdle(): Promise<void> {
    while (this.current) await this.chain;
  }

  /** A client's `ktld build --wait`: a build that covers everything saved before the
   * request (the last one, if nothing changed since); `force`: a full scan, recorded even
   * if nothing changed (the TUI's b). */
  async requested(force: boolean): Promise<BuildResult> {
    if (force) return this.runBuild("all", ["manual build"], true);
    await this.untilIdle();
    if (!(await this.hooks.syncWatcher())) this.retryAll = true;
    await this.untilIdle();
    clearTimeout(this.settleTimer);
    if (this.last && !this.pending.size && !this.retry.size && !this.retryAll) return this.last;
    return this.runBuild(this.retryAll ? "all" : "pending", ["ktld build --wait"]);
  }

  /** The watcher fell back or started: everything is looked at once. */
  rescan(trigger: string, what: string): void {
    this.hooks.background(this.runBuild("all", [trigger]), what);
  }

  /** Stops: the build in flight is cancelled and awaited, its history record included; the boot too. */
  async stop(): Promise<void> {
    clearTimeout(this.settleTimer);
    this.current?.abort.abort();
    this.cancelBoot("the daemon stops");
    await this.chain;
    await this.booting?.done.catch(() => undefined);
  }
}
