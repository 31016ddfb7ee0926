// A Redis client of the few commands the shared cache sends (GET, SET, PING), in RESP2:
// one connection, commands answered in the order sent, each answer bounded in time. Any
// error, a timeout or a reply that does not parse ends the connection: the caller treats the
// server as gone, never waits on it.
import * as net from "node:net";

export class RespError extends Error {}

export type Reply = Buffer | string | number | null | RespError | Reply[];

/** Parses one reply from `buf` at `at`: the reply and where it ends, or undefined if the
 * buffer does not hold all of it yet. Pure. */
export function parseReply(buf: Buffer, at = 0): { reply: Reply; end: number } | undefined {
  const eol = buf.indexOf("\r\n", at);
  if (eol < 0) return undefined;
  const head = buf.toString("latin1", at + 1, eol);
  switch (buf[at]) {
    case 0x2b: // +
      return { reply: head, end: eol + 2 };
    case 0x2d: // -
      return { reply: new RespError(head), end: eol + 2 };
    case 0x3a: // :
      return { reply: Number(head), end: eol + 2 };
    case 0x24: { // $
      const n = Number(head);
      if (!Number.isInteger(n) || n < -1) throw new RespError(`bad bulk length ${head}`);
      if (n === -1) return { reply: null, end: eol + 2 };
      if (buf.length < eol + 2 + n + 2) return undefined;
      return { reply: buf.subarray(eol + 2, eol + 2 + n), end: eol + 2 + n + 2 };
    }
    case 0x2a: { // *
      const n = Number(head);
      if (!Number.isInteger(n) || n < -1) throw new RespError(`bad array length ${head}`);
      if (n === -1) return { reply: null, end: eol + 2 };
      const items: Reply[] = [];
      let end = eol + 2;
      for (let i = 0; i < n; i++) {
        const r = parseReply(buf, end);
        if (!r) return undefined;
        items.push(r.reply);
        end = r.end;
      }
      return { reply: items, end };
    }
    default:
      throw new RespError(`not a RESP reply (byte ${buf[at]})`);
  }
}

/** A command in RESP: an array of bulk strings. Pure. */
export function encodeCommand(args: readonly (string | Buffer)[]): Buffer {
  const parts: Buffer[] = [Buffer.from(`*${args.length}\r\n`)];
  for (const a of args) {
    const b = typeof a === "string" ? Buffer.from(a) : a;
    parts.push(Buffer.from(`$${b.length}\r\n`), b, Buffer.from("\r\n"));
  }
  return Buffer.concat(parts);
}

interface Waiting {
  resolve(r: Reply): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

export class RedisClient {
  private buf: Buffer = Buffer.alloc(0);
  private readonly waiting: Waiting[] = [];
  private failed?: Error;

  private constructor(private readonly socket: net.Socket) {
    socket.on("data", (d: Buffer) => this.onData(d));
    socket.on("error", (e) => this.fail(e));
    socket.on("close", () => this.fail(new Error("the server closed the connection")));
  }

  /** Connects to `host:port`; rejects after `timeoutMs`. */
  static connect(host: string, port: number, timeoutMs: number): Promise<RedisClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`no connection to ${host}:${port} after ${timeoutMs} ms`));
      }, timeoutMs);
      socket.once("connect", () => {
        clearTimeout(timer);
        socket.setNoDelay(true);
        resolve(new RedisClient(socket));
      });
      socket.once("error", (e) => {
        clearTimeout(timer);
        reject(e);
      });
    });
  }

  /** Sends one command; its reply, or a rejection (an error reply, a timeout, the connection
   * gone). A timeout ends the connection: later replies could no longer be matched. */
  command(args: readonly (string | Buffer)[], timeoutMs: number): Promise<Reply> {
    if (this.failed) return Promise.reject(this.failed);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no answer after ${timeoutMs} ms`)), timeoutMs);
      this.waiting.push({ resolve, reject, timer });
      this.socket.write(encodeCommand(args));
    });
  }

  close(): void {
    this.fail(new Error("closed"));
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    let at = 0;
    try {
      for (let r = parseReply(this.buf, at); r; r = parseReply(this.buf, at)) {
        at = r.end;
        const w = this.waiting.shift();
        if (!w) throw new RespError("a reply nobody asked for");
        clearTimeout(w.timer);
        if (r.reply instanceof RespError) w.reject(r.reply);
        else w.resolve(r.reply);
      }
    } catch (e) {
      this.fail(e as Error);
      return;
    }
    this.buf = this.buf.subarray(at);
  }

  private fail(e: Error): void {
    if (!this.failed) this.failed = e;
    this.socket.destroy();
    for (const w of this.waiting.splice(0)) {
      clearTimeout(w.timer);
      w.reject(this.failed);
    }
  }
}
