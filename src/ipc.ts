// The socket transport: @achrinza/node-ipc (the maintained fork, pinned exactly) in raw
// mode, carrying the frames of protocol.ts. Only this file touches node-ipc.
import * as fs from "node:fs";
import type { Socket } from "node:net";
import { DaemonEvent, encodeFrame, FrameDecoder, Hello, Message, Op, PROTOCOL_VERSION, ProtocolError, Reply, RequestArgs, Response, Results } from "./protocol";

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { IPCModule } = require("@achrinza/node-ipc") as { IPCModule: new () => NodeIpc };

interface NodeIpcConfig {
  silent: boolean; rawBuffer: boolean; encoding: string; maxRetries: number; stopRetrying: boolean;
  unlink: boolean; maxConnections: number; id: string;
}
interface NodeIpcServer {
  on(ev: string, cb: (...args: never[]) => void): void;
  emit(socket: Socket, data: string): void;
  start(): void;
  stop(): void;
}
interface NodeIpcClient {
  on(ev: string, cb: (...args: never[]) => void): void;
  emit(data: string): void;
}
interface NodeIpc {
  config: NodeIpcConfig;
  server: NodeIpcServer;
  of: Record<string, NodeIpcClient>;
  serve(path: string, cb: () => void): void;
  connectTo(id: string, path: string, cb: () => void): void;
  disconnect(id: string): void;
}

// Raw buffers cross node-ipc as hex strings (its raw mode converts with config.encoding).
const ENCODING = "hex";

function configure(ipc: NodeIpc): void {
  ipc.config.silent = true;
  ipc.config.rawBuffer = true;
  ipc.config.encoding = ENCODING;
}

export interface Connection {
  readonly socket: Socket;
  send(msg: Message): void;
  close(): void;
}

export interface ServerHandlers {
  onMessage(conn: Connection, msg: Message): void;
  onClose(conn: Connection): void;
  /** A bad frame: the connection is closed; the server carries on. */
  onProtocolError(conn: Connection, err: ProtocolError): void;
}

export class IpcServer {
  private readonly ipc = new IPCModule();
  private readonly conns = new Map<Socket, { conn: Connection; decoder: FrameDecoder }>();

  constructor(readonly socketPath: string, private readonly handlers: ServerHandlers) {
    configure(this.ipc);
    // The caller holds the single-instance lock: only then may a stale socket be removed.
    this.ipc.config.unlink = true;
    this.ipc.config.maxConnections = 64;
  }

  private entry(socket: Socket) {
    let e = this.conns.get(socket);
    if (!e) {
      const conn: Connection = {
        socket,
        send: (msg) => {
          if (!socket.destroyed) this.ipc.server.emit(socket, encodeFrame(msg).toString(ENCODING));
        },
        close: () => socket.destroy(),
      };
      e = { conn, decoder: new FrameDecoder() };
      this.conns.set(socket, e);
    }
    return e;
  }

  start(): Promise<void> {
    const old = process.umask(0o177);
    return new Promise((resolve) => {
      this.ipc.serve(this.socketPath, () => {
        this.ipc.server.on("connect", (socket: Socket) => {
          const { conn } = this.entry(socket);
          const hello: Hello = { t: "hello", version: PROTOCOL_VERSION, pid: process.pid, ktld: "ktld" };
          conn.send(hello);
        });
        this.ipc.server.on("data", (data: Buffer, socket: Socket) => {
          const e = this.entry(socket);
          let msgs: Message[];
          try {
            msgs = e.decoder.push(data);
          } catch (err) {
            this.handlers.onProtocolError(e.conn, err as ProtocolError);
            socket.destroy();
            return;
          }
          for (const m of msgs) this.handlers.onMessage(e.conn, m);
        });
        this.ipc.server.on("socket.disconnected", (socket: Socket) => this.dropped(socket));
        this.ipc.server.on("close", (socket: Socket) => this.dropped(socket));
        this.ipc.server.on("error", () => undefined);
        fs.chmodSync(this.socketPath, 0o600);
        process.umask(old);
        resolve();
      });
      this.ipc.server.start();
    });
  }

  private dropped(socket: Socket): void {
    const e = this.conns.get(socket);
    if (!e) return;
    this.conns.delete(socket);
    this.handlers.onClose(e.conn);
  }

  broadcast(msg: Message, to: (conn: Connection) => boolean): void {
    for (const { conn } of this.conns.values()) if (to(conn)) conn.send(msg);
  }

  stop(): void {
    for (const s of this.conns.keys()) s.destroy();
    this.ipc.server.stop();
    fs.rmSync(this.socketPath, { force: true });
  }
}

export class NoDaemon extends Error {}

/** A client connection: request/response by id, plus streamed events. */
export class IpcClient {
  private nextId = 1;
  private readonly waiting = new Map<number, (r: Response) => void>();
  private eventHandler: (e: DaemonEvent) => void = () => undefined;
  private closedHandler: () => void = () => undefined;
  hello?: Hello;

  private constructor(private readonly ipc: NodeIpc, private readonly id: string) {}

  /** Connects and waits for the daemon's hello. Rejects with NoDaemon if nothing listens,
   * and with an Error if the daemon speaks another protocol version. */
  static connect(socketPath: string, timeoutMs = 3000): Promise<IpcClient> {
    const ipc = new IPCModule();
    configure(ipc);
    ipc.config.maxRetries = 0;
    ipc.config.stopRetrying = true;
    const id = `ktld-${process.pid}-${Math.random().toString(36).slice(2)}`;
    ipc.config.id = id;
    const client = new IpcClient(ipc, id);
    if (!fs.existsSync(socketPath)) return Promise.reject(new NoDaemon(`no daemon socket at ${socketPath}`));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        client.close();
        reject(new NoDaemon("the daemon did not answer"));
      }, timeoutMs);
      const decoder = new FrameDecoder();
      ipc.connectTo(id, socketPath, () => {
        const of = ipc.of[id];
        of.on("data", (data: Buffer) => {
          let msgs: Message[];
          try {
            msgs = decoder.push(data);
          } catch {
            client.close();
            return;
          }
          for (const m of msgs) {
            if (m.t === "hello") {
              clearTimeout(timer);
              client.hello = m;
              if (m.version !== PROTOCOL_VERSION) {
                client.close();
                reject(new Error(`the daemon speaks protocol ${m.version}, this ktld speaks ${PROTOCOL_VERSION}: run ktld stop, then ktld start`));
              } else {
                resolve(client);
              }
            } else if (m.t === "res") {
              const w = client.waiting.get(m.id);
              client.waiting.delete(m.id);
              w?.(m);
            } else if (m.t === "event") {
              client.eventHandler(m.event);
            }
          }
        });
        of.on("error", () => undefined);
        of.on("destroy", () => {
          clearTimeout(timer);
          reject(new NoDaemon("the daemon closed the connection"));
          for (const w of client.waiting.values()) w({ t: "res", id: 0, ok: false, error: "the daemon went away" });
          client.waiting.clear();
          client.closedHandler();
        });
      });
    });
  }

  /** The daemon's answer, typed by the op (src/protocol.ts `Results`). A connection that
   * closes first answers `ok: false`. */
  request<K extends Op>(op: K, args?: RequestArgs[K]): Promise<Reply<K>> {
    const id = this.nextId++;
    return new Promise((resolve) => {
      this.waiting.set(id, (r: Response) => resolve(r.ok ? { ok: true, result: r.result as Results[K] } : { ok: false, error: r.error ?? "the daemon failed to answer" }));
      this.sendRaw(encodeFrame({ t: "req", id, op, args }));
    });
  }

  /** Sends bytes as they are (the fuzz tests send garbage through this). */
  sendRaw(bytes: Buffer): void {
    this.ipc.of[this.id]?.emit(bytes.toString(ENCODING));
  }

  onEvent(cb: (e: DaemonEvent) => void): void {
    this.eventHandler = cb;
  }

  onClose(cb: () => void): void {
    this.closedHandler = cb;
  }

  close(): void {
    this.ipc.disconnect(this.id);
  }
}
