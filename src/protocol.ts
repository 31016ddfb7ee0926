// The one place that knows the socket protocol between `ktld` and its daemon.
//
// Transport: @achrinza/node-ipc on a unix socket in the daemon's private state dir, in raw
// buffer mode. node-ipc does not frame raw buffers, so every message is a frame:
// a 4-byte big-endian length, then a msgpack body (records off: plain maps on the wire).
// A frame that is malformed, truncated at close, or over MAX_FRAME closes that connection.
import * as path from "node:path";
import { Packr } from "msgpackr";

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
  | { readonly kind: "build-end"; readonly build: number; readonly ok: boolean; readonly summary: unknown; readonly noop?: boolean }
  | { readonly kind: "boot-start"; readonly build: number }
  | { readonly kind: "boot-end"; readonly build: number; readonly boot: unknown }
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
