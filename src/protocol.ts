// The one place that knows the socket protocol between `ktld` and its daemon.
//
// Transport: @achrinza/node-ipc on a unix socket in the daemon's private state dir, in raw
// buffer mode. node-ipc does not frame raw buffers, so every message is a frame:
// a 4-byte big-endian length, then a msgpack body (records off: plain maps on the wire).
// A frame that is malformed, truncated at close, or over MAX_FRAME closes that connection.
import * as path from "node:path";
import { Packr } from "msgpackr";
import type { ProfileReport } from "./base/profile";
import type { SharedCacheState } from "./sharedcache";

export const PROTOCOL_VERSION = 1;
export const MAX_FRAME = 16 * 1024 * 1024;

/** What a running daemon writes into its state dir (`daemon.json`). */
export interface DaemonInfo {
  readonly pid: number;
  readonly socket: string;
  readonly protocol: number;
  readonly buildDir: string;
}

/** The daemon's files in a state dir: defined here once, for the daemon and its clients. */
export function daemonInfoPath(stateDir: string): string {
  return path.join(stateDir, "daemon.json");
}

export function socketPathOf(stateDir: string): string {
  return path.join(stateDir, "ktld.sock");
}

const packr = new Packr({ useRecords: false, moreTypes: false });

export type Op = "status" | "build" | "why" | "log" | "cache-stats" | "cache-gc" | "stop" | "subscribe";
export const OPS: readonly Op[] = ["status", "build", "why", "log", "cache-stats", "cache-gc", "stop", "subscribe"];

/** Each request's arguments, as the client sends them. The daemon reads them from the wire
 * through `argsOf`, which keeps only what has the right type (a garbage frame that decodes
 * as a request gets defaults, never a crash). */
export interface RequestArgs {
  status: { history?: number };
  build: { force?: boolean };
  why: { object: string };
  log: { lines?: number; boot?: boolean };
  "cache-stats": Record<string, never>;
  "cache-gc": { cap?: number };
  stop: Record<string, never>;
  subscribe: Record<string, never>;
}

const ARG_TYPES: { [K in Op]: Record<string, "number" | "boolean" | "string"> } = {
  status: { history: "number" },
  build: { force: "boolean" },
  why: { object: "string" },
  log: { lines: "number", boot: "boolean" },
  "cache-stats": {},
  "cache-gc": { cap: "number" },
  stop: {},
  subscribe: {},
};

/** A request's arguments with the types `RequestArgs` says; anything else is dropped. */
export function argsOf<K extends Op>(op: K, raw: unknown): Partial<RequestArgs[K]> {
  const out: Record<string, unknown> = {};
  if (typeof raw !== "object" || raw === null) return out as Partial<RequestArgs[K]>;
  for (const [k, t] of Object.entries(ARG_TYPES[op])) {
    const v = (raw as Record<string, unknown>)[k];
    if (typeof v === t && (t !== "number" || Number.isFinite(v))) out[k] = v;
  }
  return out as Partial<RequestArgs[K]>;
}

// What each request answers: the daemon produces these types, the client and the TUI's view
// models consume them (client/views.ts), so a field renamed on one side fails the type check
// of the other. `ktld build --json` prints a BuildJson.

/** One BE job's decision. */
export interface JobJson {
  readonly object: string;
  readonly action: "unchanged" | "adopt" | "restore" | "compile";
  readonly reason: string;
  readonly ms?: number;
  /** The job's cache key (what its native is filed under). */
  readonly key?: string;
}

export interface BackendJson {
  /** The bitcode units the BE planned (`modules`: the old name, kept one more release). */
  readonly units: number;
  readonly modules: number;
  readonly compiled: number;
  readonly cacheHits: number;
  /** Of the cache hits, those from the shared cache (`--shared-cache`). */
  readonly sharedHits: number;
  readonly unchanged: number;
  readonly ms: number;
  readonly jobs: readonly JobJson[];
}

/** A once-per-target step's decision (src/target.ts): its time, whether the plan kept the
 * last run's outputs, and why. */
export interface StepJson {
  readonly ms: number;
  readonly skipped: boolean;
  readonly reason?: string;
  /** The steps it ran, each with its time (vmlinux's link). */
  readonly steps?: readonly { readonly name: string; readonly ms: number; readonly reason?: string }[];
}

export interface ThinLinkJson extends StepJson {
  readonly indexChanged: number;
}

/** A link target's steps: vmlinux's, and each kernel module's. */
export interface TargetJson {
  readonly thinlink: ThinLinkJson;
  readonly backend: BackendJson;
  readonly link: StepJson;
}

export interface KernelModuleJson extends TargetJson {
  readonly name: string;
  /** `fs/ext4/ext4.ko` */
  readonly ko: string;
  /** Why the module was looked at in this build. */
  readonly reason: string;
  /** Units whose bitcode ktld compiled first (a single-object module's, after make). */
  readonly bitcode: number;
}

/** kbuild's modpost and final module link, once per build for all modules. */
export interface ModulesFinalJson {
  readonly ms: number;
  /** What kbuild's make printed it did (`LD [M]  fs/ext4/ext4.ko`). */
  readonly steps: readonly string[];
  /** Why kbuild's steps were not run (their outputs would be the bytes in place). */
  readonly skipped?: string;
  readonly reason?: string;
}

/** The FE replays of a build: how many, how long, and (through distcc) how many went out and
 * which were compiled here because distcc itself failed. */
export interface FrontendJson {
  readonly compiled: number;
  readonly ms: number;
  readonly remote?: number;
  readonly fallbacks?: readonly { readonly object: string; readonly why: string }[];
}

/** distcc as the daemon uses it for FE replays (`--distcc` or kbuild's recorded wrapper). */
export interface DistccState {
  readonly hosts: string;
  readonly slots: number;
  readonly source: "recorded" | "option";
  /** Over the daemon's life: compiles done remotely, and compiled here after distcc failed. */
  readonly remote: number;
  readonly fallbacks: number;
  readonly lastFallback?: string;
}

/** The documented `--json` object of a build. */
export interface BuildJson extends TargetJson {
  readonly ok: boolean;
  readonly error?: string;
  readonly diagnostics?: string;
  readonly frontend: FrontendJson;
  readonly vmlinuxReadyMs?: number;
  readonly kernelModules: readonly KernelModuleJson[];
  readonly modulesFinal?: ModulesFinalJson;
  readonly ms: number;
  readonly profile?: ProfileReport;
}

/** A build as the history keeps it: its report, and what it looked at. */
export interface HistoryReportJson extends BuildJson {
  readonly changes?: readonly { readonly file: string; readonly kind: string }[];
  readonly frontendJobs?: readonly { readonly object: string; readonly reason: string; readonly changed: boolean }[];
  readonly kbuild?: readonly string[];
  readonly notHandled?: readonly string[];
}

/** A boot's verdict as the history, `ktld status --json` and `ktld why` carry it. */
export interface BootJson {
  readonly ok: boolean;
  readonly verdict: string;
  readonly detail: string;
  readonly ms: number;
  readonly accel: string;
  readonly log: readonly string[];
}

/** One finished build, for `ktld status` and `ktld why`. */
export interface HistoryJson {
  readonly id: number;
  readonly startedAt: number;
  readonly trigger: readonly string[];
  readonly ok: boolean;
  readonly report: HistoryReportJson;
  /** The boot of this build's kernel (`ktld start --boot`), once it has a verdict. */
  boot?: BootJson;
}

export interface StatusResult {
  readonly buildDir: string;
  readonly pid: number;
  readonly protocol: number;
  state: string;
  readonly degraded: string | null;
  readonly stale: boolean;
  uptimeMs: number;
  readonly config: { readonly arch?: string; readonly version?: string; readonly distMode: boolean };
  readonly clang: string;
  /** Bitcode units of vmlinux (`modules`: the old name, kept one more release). */
  readonly modules: number;
  readonly units: number;
  /** Kernel modules (`.ko`) ktld builds, and one line for each it leaves to kbuild. */
  readonly kernelModules: { readonly built: number; readonly leftToKbuild: readonly string[] };
  current: { readonly id: number; readonly phase: string } | null;
  readonly pending: number;
  readonly last: (BuildJson & { readonly id: number }) | null;
  /** Changes of the last build that ktld does not act on, with what to run instead. */
  readonly notHandled: readonly string[];
  readonly cache: { readonly entries: number; readonly bytes: number };
  /** `--shared-cache`: the server, its mode, whether it is usable now and why not, and what it gave. */
  readonly sharedCache: SharedCacheState | null;
  /** FE replays through distcc, or null. */
  readonly distcc?: DistccState | null;
  readonly memory: { readonly anonMiB: number; readonly fileMiB: number; readonly heapMiB: number; readonly watcher?: { readonly anonMiB: number; readonly fileMiB: number } };
  /** Present when the daemon boots each fresh kernel. */
  readonly boot: {
    readonly running: number | null;
    readonly waiting: { readonly build: number; readonly why: string } | null;
    readonly last: (BootJson & { readonly build: number }) | null;
    readonly run: string | null;
  } | null;
  readonly history: readonly HistoryJson[];
}

/** A step of a link target as `ktld why` tells it. */
export interface WhyStep {
  readonly step: "FE" | "thin-link" | "BE" | "link" | "vmlinux.o" | "BTF" | "kallsyms" | "modules";
  readonly ran: boolean;
  readonly reason: string;
}

/** `ktld why TARGET`: the newest build that did something to it, and each step's decision. */
export interface WhyResult {
  readonly object: string;
  /** The newest build that rebuilt it, or null when none in the history did. */
  readonly build: number | null;
  readonly trigger?: readonly string[];
  /** Every step it went through in that build, in order, with its decision. */
  readonly steps: readonly WhyStep[];
  /** Why the builds after it (or every build, when none rebuilt it) kept it: the newest's reason. */
  readonly kept?: { readonly build: number; readonly reason: string };
  readonly reason?: string;
  readonly frontend?: { readonly reason: string; readonly changed: boolean } | null;
  readonly backend?: JobJson | null;
  readonly thinlink?: ThinLinkJson;
  readonly link?: StepJson;
  readonly kernelModule?: KernelModuleJson;
  readonly boot?: BootJson;
  /** How FE replays ran (a compiler wrapper kbuild recorded). */
  readonly wrapper?: string;
}

export interface CacheStatsResult {
  readonly entries: number;
  readonly blobs: number;
  readonly bytes: number;
  readonly units: number;
  /** The old name of `units`, kept one more release. */
  readonly modules: number;
  /** Natives restored over the state dir's life: from the local cache, from the shared one. */
  readonly hits: { readonly local: number; readonly shared: number };
  readonly shared: SharedCacheState | null;
}

/** Each request's result. */
export interface Results {
  status: StatusResult;
  build: BuildJson & { readonly id: number };
  why: WhyResult;
  log: readonly string[];
  "cache-stats": CacheStatsResult;
  "cache-gc": { readonly evicted: number; readonly bytes: number };
  stop: { readonly stopping: true };
  subscribe: { readonly state: string };
}

/** A response to a request for `op`, as the client sees it. */
export type Reply<K extends Op> = { readonly ok: true; readonly result: Results[K] } | { readonly ok: false; readonly error: string };

export interface Hello { readonly t: "hello"; readonly version: number; readonly pid: number; readonly ktld: string }
export interface Request { readonly t: "req"; readonly id: number; readonly op: Op; readonly args?: Record<string, unknown> }
export interface Response { readonly t: "res"; readonly id: number; readonly ok: boolean; readonly result?: unknown; readonly error?: string }
export interface EventMsg { readonly t: "event"; readonly event: DaemonEvent }
export type Message = Hello | Request | Response | EventMsg;

/** What a subscriber sees while the daemon works. */
export type DaemonEvent =
  | { readonly kind: "state"; readonly state: string }
  | { readonly kind: "phase"; readonly build: number; readonly phase: string; readonly total: number }
  | { readonly kind: "job-start"; readonly build: number; readonly phase: string; readonly object: string; readonly reason: string }
  | { readonly kind: "job-end"; readonly build: number; readonly phase: string; readonly object: string; readonly ok: boolean; readonly ms: number }
  | { readonly kind: "ready"; readonly build: number; readonly target: string; readonly ms: number }
  /** A step of a target's link began (no `ms`) or ended (`ms`). */
  | { readonly kind: "link-step"; readonly build: number; readonly target: string; readonly step: string; readonly ms?: number }
  | { readonly kind: "build-end"; readonly build: number; readonly ok: boolean; readonly summary: BuildJson; readonly noop?: boolean }
  | { readonly kind: "boot-start"; readonly build: number }
  | { readonly kind: "boot-end"; readonly build: number; readonly boot: BootJson }
  | { readonly kind: "log"; readonly line: string };

export class ProtocolError extends Error {}

export function isMessage(m: unknown): m is Message {
  if (typeof m !== "object" || m === null) return false;
  const o = m as Record<string, unknown>;
  switch (o.t) {
    case "hello": return typeof o.version === "number" && typeof o.pid === "number";
    case "req": return typeof o.id === "number" && typeof o.op === "string" && (OPS as readonly string[]).includes(o.op);
    case "res": return typeof o.id === "number" && typeof o.ok === "boolean";
    case "event": return typeof o.event === "object" && o.event !== null;
    default: return false;
  }
}

export function encodeFrame(msg: Message): Buffer {
  const body = packr.pack(msg);
  if (body.length > MAX_FRAME) throw new ProtocolError(`message of ${body.length} bytes is over the ${MAX_FRAME} limit`);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length, 0);
  return Buffer.concat([head, body]);
}

/** Reassembles frames from a byte stream. Throws ProtocolError on anything not a frame. */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);

  push(chunk: Buffer): Message[] {
    this.buf = this.buf.length ? Buffer.concat([this.buf, chunk]) : chunk;
    const out: Message[] = [];
    while (this.buf.length >= 4) {
      const len = this.buf.readUInt32BE(0);
      if (len === 0 || len > MAX_FRAME) throw new ProtocolError(`bad frame length ${len}`);
      if (this.buf.length < 4 + len) break;
      const body = this.buf.subarray(4, 4 + len);
      this.buf = this.buf.subarray(4 + len);
      let msg: unknown;
      try {
        msg = packr.unpack(body);
      } catch (e) {
        throw new ProtocolError(`undecodable frame: ${(e as Error).message}`);
      }
      if (!isMessage(msg)) throw new ProtocolError("frame is not a ktld message");
      out.push(msg);
    }
    return out;
  }

  /** Bytes of an unfinished frame (a connection closed with these was cut short). */
  get pending(): number {
    return this.buf.length;
  }
}
