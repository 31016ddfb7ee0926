// The daemon: watches the tree, builds after each settled burst of changes, serves clients.
import * as fs from "node:fs";
import * as path from "node:path";
import { Cancelled } from "../src/base/errors";
import { Connection, IpcServer } from "../src/ipc";
import { argsOf, DaemonEvent, HistoryJson, WhyResult, Message, Op, PROTOCOL_VERSION, Request, RequestArgs, Response, Results, socketPathOf, StatusResult } from "../src/protocol";
import { jsonReport } from "../src/report";
import { koPath } from "../src/kbuild/names";
import { placedModules } from "../src/modulebuild";
import { Session } from "../src/session";
import { StateDir } from "../src/state";
import { LINK_TARGETS, ModuleOf, why } from "../src/why";
import { Store } from "../src/store";
import type { BootOptions } from "../src/boot";
import { DEFAULT_CACHE_CAP } from "../src/blobs";
import { NativeCache } from "../src/cache";
import { BuildResult, BuildScheduler, DaemonState, HISTORY_KEEP } from "./scheduler";
import { TreeWatcher } from "./watcher";
import { SharedCache, SharedCacheConfig } from "../src/sharedcache";

export type { DaemonState } from "./scheduler";


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
  /** `--shared-cache`: the team's native cache behind the local one. */
  readonly shared?: SharedCacheConfig;
  /** `--distcc`: FE replays through distcc (DISTCC_HOSTS from the environment). */
  readonly distcc?: boolean;
  /** `--be-executor CMD`: BE jobs as a DTLTO batch to CMD. */
  readonly beExecutor?: string;
}


/** The daemon's memory in MiB: resident anonymous (its own) and file-backed (mapped files:
 * code, the LMDB map) apart, and the JS heap within the anonymous part; its watcher
 * process's apart. */
function memoryNow(watcherPid: number | undefined): { anonMiB: number; fileMiB: number; heapMiB: number; watcher?: { anonMiB: number; fileMiB: number } } {
  const rss = (pid: number | "self") => {
    const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
    const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0);
    const mib = (n: number) => Math.round(n / 1024);
    return { anonMiB: mib(kb("RssAnon")), fileMiB: mib(kb("RssFile") + kb("RssShmem")) };
  };
  let watcher: { anonMiB: number; fileMiB: number } | undefined;
  try {
    if (watcherPid) watcher = rss(watcherPid);
  } catch {
    // Between a watcher's end and its successor: nothing to report.
  }
  return { ...rss("self"), heapMiB: Math.round(process.memoryUsage().heapUsed / 1024 ** 2), watcher };
}

export class Daemon {
  state: DaemonState = "starting";
  degraded?: string;
  readonly startedAt = Date.now();
  private readonly session: Session;
  private readonly scheduler: BuildScheduler;
  private watcher!: TreeWatcher;
  private server!: IpcServer;
  private idleTimer?: NodeJS.Timeout;
  private readonly subscribers = new Set<Connection>();
  private readonly logRing: string[] = [];
  private readonly cache: NativeCache;
  private readonly shared?: SharedCache;

  constructor(private readonly opts: DaemonOptions) {
    this.cache = new NativeCache(opts.store, opts.state.blobs, opts.state.notesPath);
    this.shared = opts.shared && new SharedCache(opts.shared, (l) => opts.log(l));
    this.session = new Session({ buildDir: opts.buildDir, state: opts.state, store: opts.store, jobs: opts.jobs, installModPath: opts.installModPath, shared: this.shared, distcc: opts.distcc, beExecutor: opts.beExecutor, log: (l) => opts.log(l) });
    this.scheduler = new BuildScheduler(this.session, { state: opts.state, store: opts.store, settleMs: opts.settleMs, boot: opts.boot }, {
      log: (m) => this.log(m),
      broadcast: (e) => this.broadcast(e),
      state: () => this.state,
      setState: (st) => this.setState(st),
      syncWatcher: () => this.watcher.sync(),
      restartWatcher: () => this.restartWatcher(),
      background: (p, what) => this.background(p, what),
      afterBuild: () => {
        this.resetIdle();
        this.collectWhenIdle();
      },
    });
  }

  /** The last build (the daemon's own or, after a restart, the history's newest). */
  get last(): BuildResult | undefined {
    return this.scheduler.last;
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
    this.scheduler.rescan("startup scan", "the startup scan");
  }

  private async startWatcher(polling: boolean): Promise<void> {
    const files = this.session.inputFiles();
    const dirs = new Set(files.map((f) => path.dirname(f)));
    for (const f of this.session.kbuildFiles) dirs.add(path.dirname(f));
    dirs.add(this.session.buildDir);
    const explicit = [...this.session.incbinFiles, path.join(this.session.buildDir, ".config")];
    this.watcher = new TreeWatcher({
      dirs: [...dirs],
      // inputFiles() has the .incbin payloads and .config already.
      watchFiles: [...new Set([...files, ...this.session.kbuildFiles])],
      files: new Set(explicit),
      cookieDir: path.join(this.opts.state.dir, "cookies"),
      onChange: (file, kind) => this.scheduler.onChange(file, kind),
      log: (m) => this.log(m),
      onDegraded: (why) => {
        this.degraded = why;
        this.broadcast({ kind: "state", state: this.stateName() });
        // Polling starts from now: anything missed in between is found by a full scan.
        this.scheduler.rescan("rescan after watcher fallback", "the rescan after the watcher fallback");
      },
      onLost: (why) => {
        this.log(`[WATCHER] ${why}: starting another and scanning every input file`);
        this.background(this.restartWatcher().then(() => this.scheduler.rescan("rescan after the watcher was lost", "the rescan after the watcher was lost")), "the watcher's restart");
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

  /** Work nobody awaits (a timer's, the startup scan): a failure is logged and the daemon
   * goes on, never an unhandled rejection that would take it down. */
  private background(p: Promise<unknown>, what: string): void {
    p.catch((e: unknown) => {
      if (e instanceof Cancelled) return;
      this.log(`[DAEMON] ${what} failed: ${(e as Error)?.stack ?? String(e)}`);
      if (this.state === "building" && !this.scheduler.current) this.setState("failed");
    });
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
      if (!this.scheduler.current && !this.scheduler.pending.size) gc();
    }, 500);
    this.gcTimer.unref();
  }

  /** The new watcher is up before the old one closes: a save in between is seen by one of them. */
  private async restartWatcher(): Promise<void> {
    const old = this.watcher;
    await this.startWatcher(old.polling);
    await old.close();
  }

  private resetIdle(): void {
    clearTimeout(this.idleTimer);
    if (this.opts.idleTimeoutMs <= 0) return;
    this.idleTimer = setTimeout(() => {
      if (this.scheduler.current) return this.resetIdle(); // never in the middle of a build
      this.log(`[DAEMON] idle for ${Math.round(this.opts.idleTimeoutMs / 1000)} s: shutting down`);
      this.background(this.stop(), "stopping");
    }, this.opts.idleTimeoutMs);
    this.idleTimer.unref();
  }

  private broadcast(e: DaemonEvent): void {
    if (this.server && this.subscribers.size) this.server.broadcast({ t: "event", event: e }, (c) => this.subscribers.has(c));
  }

  status(): Omit<StatusResult, "history"> {
    const cfg = this.session.tree.config;
    return {
      buildDir: this.session.buildDir,
      pid: process.pid,
      protocol: PROTOCOL_VERSION,
      state: this.stateName(),
      degraded: this.degraded ?? null,
      stale: this.scheduler.stale,
      uptimeMs: Date.now() - this.startedAt,
      config: { arch: this.session.tree.makeVars.find((v) => v.startsWith("ARCH=")), version: cfg.get("CONFIG_CLANG_VERSION"), distMode: this.session.tree.distMode },
      clang: this.session.tools.clangIdentity.split(":").slice(3).join(":"),
      modules: this.session.tree.units.size,
      units: this.session.tree.units.size,
      kernelModules: (({ placed, unplaced }) => ({ built: placed.length, leftToKbuild: unplaced }))(placedModules(this.session.tree)),
      current: this.scheduler.current ? { id: this.scheduler.current.id, phase: this.scheduler.current.phase } : null,
      pending: this.scheduler.pending.size,
      last: this.last ? { id: this.last.id, ...jsonReport(this.last.report) } : null,
      /** Changes of the last build that ktld does not act on, with what to run instead. */
      notHandled: this.last?.notHandled ?? [],
      cache: (({ entries, bytes }) => ({ entries, bytes }))(this.cache.stats()),
      sharedCache: this.shared?.state() ?? null,
      distcc: this.session.distccState(),
      memory: memoryNow(this.watcher.pid),
      boot: this.opts.boot ? { ...this.scheduler.bootStatus(), run: this.opts.boot.run ?? null } : null,
    };
  }

  private history(limit: number): HistoryJson[] {
    return this.opts.store.recentBuilds(limit);
  }

  /** One handler per request, with its arguments typed (`RequestArgs`, read by `argsOf`). */
  private readonly handlers: { [K in Op]: (args: Partial<RequestArgs[K]>, conn: Connection) => Promise<Results[K]> | Results[K] } = {
    status: (a) => ({ ...this.status(), history: this.history(a.history ?? 10) }),
    build: async (a) => {
      const res = await this.scheduler.requested(a.force === true);
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
      const st = this.cache.stats();
      // `modules`: the old name of `units`, kept one more release.
      return { ...st, modules: st.units, hits: this.opts.store.getMeta("hits") ?? { local: 0, shared: 0 }, shared: this.shared?.state() ?? null };
    },
    "cache-gc": (a) => this.cache.collectGarbage(a.cap ?? DEFAULT_CACHE_CAP),
    subscribe: (_a, conn) => {
      this.subscribers.add(conn);
      return { state: this.stateName() };
    },
    stop: () => {
      setImmediate(() => void this.stop());
      return { stopping: true } as const;
    },
  };

  private async handle(req: Request, conn: Connection): Promise<Response> {
    // Looking (status, log, why) is not work: only builds keep the daemon from idling out.
    if (req.op === "build") this.resetIdle();
    const handler = this.handlers[req.op] as (args: unknown, conn: Connection) => Promise<unknown> | unknown;
    return { t: "res", id: req.id, ok: true, result: await handler(argsOf(req.op, req.args), conn) };
  }

  /** Every step's decision for `object` in the newest build that did something to it
   * (src/why.ts), from the build history. */
  why(object: string): WhyResult {
    const tree = this.session.tree;
    const moduleOf = (o: string): ModuleOf | undefined => {
      const km = tree.kernelModules.find((k) => k.object === o || koPath(k.object) === o || k.members.some((m) => m.object === o));
      if (!km) return undefined;
      return { name: km.name, whole: km.object === o || koPath(km.object) === o, unit: km.members.find((m) => m.object === o)?.bitcode ?? o };
    };
    const w = why(object, this.history(HISTORY_KEEP), moduleOf);
    const wrapper = tree.compilerWrapper;
    if (!wrapper || LINK_TARGETS.has(object)) return w;
    return { ...w, wrapper: `FE replays run through ${wrapper}, as kbuild recorded them; BE compiles run ${this.session.tools.clang} without it (${path.basename(wrapper)} does not cache -fthinlto-index compiles)` };
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
    clearTimeout(this.idleTimer);
    // The whole build, its history record included, before the store closes; the boot too.
    await this.scheduler.stop();
    await this.watcher.close();
    this.server.stop();
    await this.session.close();
    this.log("[DAEMON] stopped");
    this.opts.onExit();
  }
}
