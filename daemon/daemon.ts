// The daemon: watches the tree, builds after each settled burst of changes, serves clients.
import * as fs from "node:fs";
import * as path from "node:path";
import { BuildReport } from "../src/build";
import { Cancelled } from "../src/errors";
import { Connection, IpcServer } from "../src/ipc";
import { argsOf, DaemonEvent, Message, Op, PROTOCOL_VERSION, Request, RequestArgs, Response, socketPathOf } from "../src/protocol";
import { endProfile, section, startProfile } from "../src/profile";
import { jsonReport } from "../src/report";
import { koPath } from "../src/kbuild/modules";
import { placedModules } from "../src/modulebuild";
import { Session, SessionBuildResult, WatchKind } from "../src/session";
import { StateDir } from "../src/state";
import { BootJson, BuildHistoryEntry, Store } from "../src/store";
import { boot, bootJson, BootOptions } from "../src/boot";
import { DEFAULT_CACHE_CAP } from "../src/blobs";
import { collectGarbage } from "../src/build";
import { TreeWatcher } from "./watcher";

export type DaemonState = "starting" | "idle" | "building" | "failed" | "stopping";

export interface DaemonOptions {
  readonly buildDir: string;
  readonly state: StateDir;
  readonly store: Store;
  readonly jobs: number;
  readonly idleTimeoutMs: number;
  /** Install the kernel modules there after each change (`--install-mod-path`). */
  readonly installModPath?: string;
  readonly settleMs: number;
  readonly log: (msg: string) => void;
  readonly onExit: () => void;
  /** `--boot`: every fresh kernel is booted in qemu and gets a verdict. */
  readonly boot?: Pick<BootOptions, "run" | "timeoutMs" | "memoryMiB" | "append">;
}


const HISTORY_KEEP = 50;

/** The daemon's memory in MiB: resident anonymous (its own) and file-backed (mapped files:
 * code, the LMDB map) apart, and the JS heap within the anonymous part. */
function memoryNow(): { anonMiB: number; fileMiB: number; heapMiB: number } {
  const status = fs.readFileSync("/proc/self/status", "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
  const mib = (n: number) => Math.round(n / 1024);
  return { anonMiB: mib(kb("RssAnon")), fileMiB: mib(kb("RssFile") + kb("RssShmem")), heapMiB: Math.round(process.memoryUsage().heapUsed / 1024 ** 2) };
}

export class Daemon {
  state: DaemonState = "starting";
  degraded?: string;
  readonly startedAt = Date.now();
  private readonly session: Session;
  private watcher!: TreeWatcher;
  private server!: IpcServer;
  private readonly pending = new Map<string, WatchKind>();
  private settleTimer?: NodeJS.Timeout;
  private idleTimer?: NodeJS.Timeout;
  private current?: { id: number; abort: AbortController; done: Promise<SessionBuildResult>; phase: string };
  private readonly subscribers = new Set<Connection>();
  private readonly logRing: string[] = [];
  private nextBuildId: number;
  last?: SessionBuildResult & { id: number };
  private stale = false;
  /** Files of a failed build: their changes were not committed, so every later build
   * looks at them again until one succeeds. */
  private retry = new Map<string, WatchKind>();
  private retryAll = false;
  /** The boot of a fresh kernel in flight, and the last verdict. */
  private booting?: { build: number; abort: AbortController; done: Promise<void> };
  lastBoot?: BootJson & { build: number };

  constructor(private readonly opts: DaemonOptions) {
    this.session = new Session({ buildDir: opts.buildDir, state: opts.state, store: opts.store, jobs: opts.jobs, installModPath: opts.installModPath });
    const newest = [...opts.store.history.getRange({ reverse: true, limit: 1 })].map((e) => e.value as BuildHistoryEntry)[0];
    this.nextBuildId = (newest?.id ?? 0) + 1;
    if (newest) {
      // The last build of an earlier run stands until something changes.
      this.last = { id: newest.id, report: newest.report as BuildReport, changes: [], frontendJobs: [], kbuild: [], notHandled: (newest.report as { notHandled?: string[] }).notHandled ?? [], noop: false };
      this.stale = !newest.ok;
    }
  }

  log(msg: string): void {
    const line = `${new Date().toISOString()} ${msg}`;
    this.opts.log(line);
    this.logRing.push(line);
    if (this.logRing.length > 2000) this.logRing.splice(0, this.logRing.length - 2000);
    this.broadcast({ kind: "log", line });
  }

  get socketPath(): string {
    return socketPathOf(this.opts.state.dir);
  }

  async start(): Promise<void> {
    this.server = new IpcServer(this.socketPath, {
      onMessage: (conn, msg) => void this.onMessage(conn, msg),
      onClose: (conn) => this.subscribers.delete(conn),
      onProtocolError: (_conn, err) => this.log(`[IPC] closed a connection: ${err.message}`),
    });
    await this.startWatcher(false);
    await this.server.start();
    this.log(`[DAEMON] serving ${this.socketPath} (pid ${process.pid}, protocol ${PROTOCOL_VERSION})`);
    this.setState("idle");
    this.resetIdle();
    // Edits made while no daemon ran: one full scan against the store.
    this.background(this.runBuild("all", ["startup scan"]), "the startup scan");
  }

  private async startWatcher(polling: boolean): Promise<void> {
    const files = this.session.inputFiles();
    const dirs = new Set(files.map((f) => path.dirname(f)));
    for (const f of this.session.kbuildFiles) dirs.add(path.dirname(f));
    dirs.add(this.session.buildDir);
    this.watcher = new TreeWatcher({
      dirs: [...dirs],
      files: new Set([...this.session.incbinFiles, path.join(this.session.buildDir, ".config")]),
      cookieDir: path.join(this.opts.state.dir, "cookies"),
      onChange: (file, kind) => this.onChange(file, kind),
      log: (m) => this.log(m),
      onDegraded: (why) => {
        this.degraded = why;
        this.broadcast({ kind: "state", state: this.stateName() });
        // Polling starts from now: anything missed in between is found by a full scan.
        this.background(this.runBuild("all", ["rescan after watcher fallback"]), "the rescan after the watcher fallback");
      },
      polling,
    });
    await this.watcher.start();
  }

  stateName(): string {
    return this.degraded && this.state === "idle" ? "degraded watching" : this.state;
  }

  private setState(s: DaemonState): void {
    this.state = s;
    this.broadcast({ kind: "state", state: this.stateName() });
  }

  private onChange(file: string, kind: WatchKind): void {
    this.pending.set(file, kind);
    // A newer change cancels a build still compiling: its result would be stale anyway.
    if (this.current && (this.current.phase === "FE" || this.current.phase === "BE")) {
      this.log(`[BUILD] #${this.current.id}: cancelled by a change of ${path.relative(this.session.buildDir, file)}`);
      this.current.abort.abort();
    }
    this.schedule();
  }

  private schedule(): void {
    clearTimeout(this.settleTimer);
    this.settleTimer = setTimeout(() => this.background(this.settled(), "a build after changes"), this.opts.settleMs);
  }

  /** Work nobody awaits (a timer's, the startup scan): a failure is logged and the daemon
   * goes on, never an unhandled rejection that would take it down. */
  private background(p: Promise<unknown>, what: string): void {
    p.catch((e: unknown) => {
      if (e instanceof Cancelled) return;
      this.log(`[DAEMON] ${what} failed: ${(e as Error)?.stack ?? String(e)}`);
      if (this.state === "building" && !this.current) this.setState("failed");
    });
  }

  private gitBusy(): boolean {
    return fs.existsSync(path.join(this.session.tree.srcTree, ".git/index.lock"));
  }

  private async settled(): Promise<void> {
    if (this.current || this.state === "stopping") return; // runBuildNow reschedules when done
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

  private runBuild(what: "pending" | "all", trigger: string[], record = false): Promise<SessionBuildResult & { id: number }> {
    const next = this.chain.then(() => this.runBuildNow(what, trigger, record));
    this.chain = next.catch(() => undefined);
    return next;
  }

  private async runBuildNow(what: "pending" | "all", trigger: string[], record: boolean): Promise<SessionBuildResult & { id: number }> {
    // A build queued behind the one a stop cancelled: the daemon is going away.
    if (this.state === "stopping") throw new Cancelled();
    // A newer build makes the kernel being booted stale: its boot stops here.
    this.cancelBoot();
    const profile = startProfile();
    section("watcher sync");
    const synced = await this.watcher.sync();
    let candidates: ReadonlyMap<string, WatchKind> | "all" = "all";
    if (!synced) this.log("[WATCHER] the cookie was not seen in time: scanning every input file");
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
    this.setState("building");
    const done = this.session.build(candidates, {
      buildId: id,
      signal: abort.signal,
      changedMeanwhile: () => this.pending.keys(),
      log: (line) => this.log(`[BUILD] ${line}`),
      onEvent: (e) => {
        if (e.kind === "phase") entry.phase = e.phase;
        this.broadcast(e);
      },
    });
    entry.done = done;
    let result: SessionBuildResult;
    try {
      result = await done;
    } finally {
      this.current = undefined;
    }
    const r = result.report;
    // The profile ends with the build's own work (its history record comes after).
    r.profile = endProfile(profile);
    const didWork = r.frontend.compiled > 0 || result.kbuild.length > 0 || r.backend.modules > 0 || !r.ok || (r.kernelModules?.length ?? 0) > 0;
    if (didWork || (what === "pending" && !result.noop)) {
      this.log(`[BUILD] #${id} ${r.ok ? "ok" : `FAILED: ${r.error}`} in ${r.ms} ms: FE ${r.frontend.compiled}, BE ${r.backend.compiled} run/${r.backend.cacheHits} cached/${r.backend.unchanged} unchanged${r.link.ms && !r.link.skipped ? ", linked" : ""}${r.kernelModules?.length ? `, modules ${r.kernelModules.map((m) => `${m.name} (BE ${m.backend.compiled} run/${m.backend.cacheHits} cached)`).join(", ")}` : ""}`);
    }
    if (!result.noop && result.changes.length) {
      const shown = result.changes.slice(0, 8).map((c) => `${path.relative(this.session.buildDir, c.file)} ${c.kind}`);
      this.log(`[BUILD] #${id} changes: ${shown.join(", ")}${result.changes.length > 8 ? ` (+${result.changes.length - 8} more)` : ""}`);
    }
    if (r.diagnostics) this.log(`[BUILD] #${id} diagnostics:\n${r.diagnostics.trimEnd()}`);
    const cancelled = !r.ok && /^cancelled/.test(r.error ?? "");
    if (result.noop && this.last && !this.stale && !record) {
      // Nothing had changed (a touch, a save of the same bytes): the last build stands.
      this.log(`[BUILD] no content change: nothing to do`);
      this.nextBuildId--;
      this.setState(this.stale ? "failed" : "idle");
      if (this.pending.size) this.schedule();
      this.resetIdle();
      this.collectWhenIdle();
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
      if (this.opts.store.roomy()) {
        await this.opts.store.history.put(id, h);
        for (const old of this.opts.store.history.getKeys({ end: id - HISTORY_KEEP })) await this.opts.store.history.remove(old);
      }
    } else {
      // What the cancelled build was given is still to do.
      for (const f of files) if (!this.pending.has(f)) this.pending.set(f, "change");
    }
    this.broadcast({ kind: "build-end", build: id, ok: r.ok, summary: jsonReport(r) });
    if (r.ok && this.opts.boot && r.link.ms > 0 && !r.link.skipped) this.startBoot(id);
    this.setState(cancelled ? "building" : r.ok ? "idle" : "failed");
    if (result.kbuild.length) await this.restartWatcher();
    if (this.pending.size) this.schedule();
    else if (cancelled) this.setState("idle");
    this.resetIdle();
    this.collectWhenIdle();
    return { ...result, id };
  }

  /** Boots build `id`'s kernel beside whatever comes next: a boot never delays a build, and
   * the next build cancels it. The verdict goes into that build's history record. */
  private startBoot(id: number): void {
    const abort = new AbortController();
    this.broadcast({ kind: "boot-start", build: id });
    this.log(`[BOOT] #${id}: booting the fresh vmlinux${this.opts.boot!.run ? ` to run ${this.opts.boot!.run}` : ""}`);
    const done = boot({ ...this.opts.boot!, buildDir: this.session.buildDir, workDir: path.join(this.opts.state.dir, "boot"), signal: abort.signal })
      .then(async (r) => {
        const b = { ...bootJson(r), build: id };
        this.log(`[BOOT] #${id}: ${r.verdict} in ${(r.ms / 1000).toFixed(1)} s (${r.accel}): ${r.detail}`);
        if (r.verdict !== "cancelled") this.lastBoot = b;
        const h = this.opts.store.history.get(id);
        if (h && this.opts.store.roomy()) await this.opts.store.history.put(id, { ...h, boot: bootJson(r) });
        this.broadcast({ kind: "boot-end", build: id, boot: b });
      })
      .finally(() => {
        if (this.booting?.abort === abort) this.booting = undefined;
      });
    this.booting = { build: id, abort, done };
    this.background(done, `the boot of build #${id}`);
  }

  private cancelBoot(): void {
    if (!this.booting) return;
    this.log(`[BOOT] #${this.booting.build}: cancelled (a newer build)`);
    this.booting.abort.abort();
  }

  private gcTimer?: NodeJS.Timeout;
  /** One full collection a moment after a build, if no other started meanwhile: a build
   * leaves tens of MB of garbage (file reads, hashes, reports) that V8 would otherwise keep
   * resident until the next build. Needs --expose-gc (the client starts the daemon so). */
  private collectWhenIdle(): void {
    const gc = (globalThis as { gc?: () => void }).gc;
    if (!gc) return;
    clearTimeout(this.gcTimer);
    this.gcTimer = setTimeout(() => {
      if (!this.current && !this.pending.size) gc();
    }, 500);
    this.gcTimer.unref();
  }

  private async restartWatcher(): Promise<void> {
    await this.watcher.close();
    await this.startWatcher(this.watcher.polling);
  }

  private async untilIdle(): Promise<void> {
    while (this.current) await this.current.done.catch(() => undefined);
  }

  private resetIdle(): void {
    clearTimeout(this.idleTimer);
    if (this.opts.idleTimeoutMs <= 0) return;
    this.idleTimer = setTimeout(() => {
      if (this.current) return this.resetIdle(); // never in the middle of a build
      this.log(`[DAEMON] idle for ${Math.round(this.opts.idleTimeoutMs / 1000)} s: shutting down`);
      this.background(this.stop(), "stopping");
    }, this.opts.idleTimeoutMs);
    this.idleTimer.unref();
  }

  private broadcast(e: DaemonEvent): void {
    if (this.server && this.subscribers.size) this.server.broadcast({ t: "event", event: e }, (c) => this.subscribers.has(c));
  }

  status(): Record<string, unknown> {
    const cfg = this.session.tree.config;
    return {
      buildDir: this.session.buildDir,
      pid: process.pid,
      protocol: PROTOCOL_VERSION,
      state: this.stateName(),
      degraded: this.degraded ?? null,
      stale: this.stale,
      uptimeMs: Date.now() - this.startedAt,
      config: { arch: this.session.tree.makeVars.find((v) => v.startsWith("ARCH=")), version: cfg.get("CONFIG_CLANG_VERSION"), distMode: this.session.tree.distMode },
      clang: this.session.tools.clangIdentity.split(":").slice(3).join(":"),
      modules: this.session.tree.units.size,
      units: this.session.tree.units.size,
      kernelModules: (({ placed, unplaced }) => ({ built: placed.length, leftToKbuild: unplaced }))(placedModules(this.session.tree)),
      current: this.current ? { id: this.current.id, phase: this.current.phase } : null,
      pending: this.pending.size,
      last: this.last ? { id: this.last.id, ...jsonReport(this.last.report) } : null,
      /** Changes of the last build that ktld does not act on, with what to run instead. */
      notHandled: this.last?.notHandled ?? [],
      cache: { entries: this.opts.store.cache.getKeysCount(), bytes: this.opts.state.blobs.usage().bytes },
      memory: memoryNow(),
      boot: this.opts.boot ? { running: this.booting?.build ?? null, last: this.lastBoot ?? null, run: this.opts.boot.run ?? null } : null,
    };
  }

  private history(limit: number): BuildHistoryEntry[] {
    return [...this.opts.store.history.getRange({ reverse: true, limit })].map((e) => e.value as BuildHistoryEntry);
  }

  /** One handler per request, with its arguments typed (`RequestArgs`, read by `argsOf`). */
  private readonly handlers: { [K in Op]: (args: Partial<RequestArgs[K]>, conn: Connection) => Promise<unknown> | unknown } = {
    status: (a) => ({ ...this.status(), history: this.history(a.history ?? 10) }),
    build: async (a) => {
      if (a.force) {
        // Asked for by a person (the TUI's b): a full scan, recorded even if nothing changed.
        const res = await this.runBuild("all", ["manual build"], true);
        return { id: res.id, ...jsonReport(res.report) };
      }
      // Everything saved before the request must be in the build it answers with.
      await this.untilIdle();
      if (!(await this.watcher.sync())) this.retryAll = true;
      await this.untilIdle();
      clearTimeout(this.settleTimer);
      if (this.last && !this.pending.size && !this.retry.size && !this.retryAll) {
        return { id: this.last.id, ...jsonReport(this.last.report) };
      }
      const res = await this.runBuild(this.retryAll ? "all" : "pending", ["ktld build --wait"]);
      return { id: res.id, ...jsonReport(res.report) };
    },
    why: (a) => this.why(a.object ?? ""),
    log: (a) => {
      if (!a.boot) return this.logRing.slice(-(a.lines ?? 200));
      const file = path.join(this.opts.state.dir, "boot", "console.log");
      if (!fs.existsSync(file)) throw new Error(this.opts.boot ? "no boot yet" : "the daemon does not boot kernels: start it with --boot");
      return fs.readFileSync(file, "utf8").split("\n");
    },
    "cache-stats": () => {
      const usage = this.opts.state.blobs.usage();
      return { entries: this.opts.store.cache.getKeysCount(), blobs: usage.count, bytes: usage.bytes, modules: this.opts.store.modules.getKeysCount() };
    },
    "cache-gc": (a) => collectGarbage(this.opts.store, this.opts.state.blobs, a.cap ?? DEFAULT_CACHE_CAP),
    subscribe: (_a, conn) => {
      this.subscribers.add(conn);
      return { state: this.stateName() };
    },
    stop: () => {
      setImmediate(() => void this.stop());
      return { stopping: true };
    },
  };

  private async handle(req: Request, conn: Connection): Promise<Response> {
    // Looking (status, log, why) is not work: only builds keep the daemon from idling out.
    if (req.op === "build") this.resetIdle();
    const handler = this.handlers[req.op] as (args: unknown, conn: Connection) => Promise<unknown> | unknown;
    return { t: "res", id: req.id, ok: true, result: await handler(argsOf(req.op, req.args), conn) };
  }

  /** The reasons for an object's last FE and BE, from the build history. */
  why(object: string): Record<string, unknown> {
    const wrapper = this.session.tree.compilerWrapper;
    const via = wrapper ? { wrapper: `FE replays run through ${wrapper}, as kbuild recorded them; BE compiles run ${this.session.tools.clang} without it (${path.basename(wrapper)} does not cache -fthinlto-index compiles)` } : {};
    return { ...this.whyFromHistory(object), ...via };
  }

  private whyFromHistory(object: string): Record<string, unknown> {
    for (const h of this.history(HISTORY_KEEP)) {
      type Jobs = { jobs?: { object: string; action: string; reason: string }[] };
      const rep = h.report as { backend?: Jobs; frontendJobs?: { object: string; reason: string; changed: boolean }[]; kernelModules?: { name: string; ko: string; backend: Jobs }[] };
      const fe = rep.frontendJobs?.find((j) => j.object === object);
      // A kernel module's BE jobs name its units (a single-object module's by ktld's bitcode file).
      const km = this.session.tree.kernelModules.find((k) => k.object === object || koPath(k.object) === object || k.members.some((m) => m.object === object));
      const unit = km?.members.find((m) => m.object === object)?.bitcode ?? object;
      const kmRep = km ? rep.kernelModules?.find((m) => m.name === km.name) : undefined;
      const be = rep.backend?.jobs?.find((j) => j.object === object) ?? kmRep?.backend.jobs?.find((j) => j.object === unit);
      if (fe || be || (kmRep && (km?.object === object || koPath(km!.object) === object))) {
        return { object, build: h.id, trigger: h.trigger, frontend: fe ?? null, backend: be ?? null, ...(kmRep ? { kernelModule: kmRep } : {}), ...(h.boot ? { boot: h.boot } : {}) };
      }
    }
    return { object, build: null, reason: "not rebuilt by any recent build: none of its inputs changed" };
  }

  private async onMessage(conn: Connection, msg: Message): Promise<void> {
    if (msg.t !== "req") return;
    let res: Response;
    try {
      res = await this.handle(msg, conn);
    } catch (e) {
      res = { t: "res", id: msg.id, ok: false, error: (e as Error).message };
    }
    conn.send(res);
  }

  async stop(): Promise<void> {
    if (this.state === "stopping") return;
    this.setState("stopping");
    clearTimeout(this.settleTimer);
    clearTimeout(this.idleTimer);
    this.current?.abort.abort();
    this.cancelBoot();
    // The whole build, its history record included, before the store closes; the boot too.
    await this.chain;
    await this.booting?.done.catch(() => undefined);
    await this.watcher.close();
    this.server.stop();
    await this.session.close();
    this.log("[DAEMON] stopped");
    this.opts.onExit();
  }
}
