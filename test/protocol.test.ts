// The socket protocol: framing, and a server that survives garbage (unit level; the live
// daemon gets the same treatment in daemon.test.ts).
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { test } from "node:test";
import { Connection, IpcClient, IpcServer } from "../src/ipc";
import { prng, sendRawBytes } from "./helpers";
import { encodeFrame, FrameDecoder, isMessage, MAX_FRAME, Message, ProtocolError } from "../src/protocol";

test("frames split at every byte boundary decode to the same messages", () => {
  const msgs: Message[] = [
    { t: "req", id: 1, op: "status" },
    { t: "res", id: 1, ok: true, result: { nested: [1, "two", { three: null }] } },
    { t: "event", event: { kind: "log", line: "x".repeat(5000) } },
  ];
  const bytes = Buffer.concat(msgs.map(encodeFrame));
  for (let cut = 1; cut < bytes.length; cut++) {
    const d = new FrameDecoder();
    const got = [...d.push(bytes.subarray(0, cut)), ...d.push(bytes.subarray(cut))];
    assert.deepEqual(got, msgs);
    assert.equal(d.pending, 0);
  }
});

test("bad frames are refused: zero, oversized, undecodable, not a message", () => {
  const head = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(n, 0);
    return b;
  };
  assert.throws(() => new FrameDecoder().push(head(0)), ProtocolError);
  assert.throws(() => new FrameDecoder().push(head(MAX_FRAME + 1)), ProtocolError);
  assert.throws(() => new FrameDecoder().push(Buffer.concat([head(3), Buffer.from([0xc1, 0xc1, 0xc1])])), ProtocolError);
  assert.throws(() => new FrameDecoder().push(encodeFrame({ t: "nope" } as unknown as Message)), /not a ktld message/);
  assert.equal(isMessage({ t: "req", id: 1, op: "format-disk" }), false);
  const d = new FrameDecoder();
  assert.deepEqual(d.push(head(10)), []);
  assert.equal(d.pending, 4, "a truncated frame waits for more");
});

test("an IpcServer survives random, truncated and huge frames and serves a real client after each", async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-ipc-"));
  const sock = path.join(dir, "s.sock");
  let protocolErrors = 0;
  const server = new IpcServer(sock, {
    onMessage: (conn: Connection, m: Message) => {
      if (m.t === "req") conn.send({ t: "res", id: m.id, ok: true, result: { pong: m.op } });
    },
    onClose: () => undefined,
    onProtocolError: () => protocolErrors++,
  });
  await server.start();
  assert.equal(fs.statSync(sock).mode & 0o777, 0o600);
  const seed = Number(process.env.KTLD_FUZZ_SEED ?? 1234);
  const rand = prng(seed);
  try {
    for (let i = 0; i < 40; i++) {
      const kind = i % 4;
      let payload: Buffer;
      if (kind === 0) payload = Buffer.from(Array.from({ length: 1 + Math.floor(rand() * 300) }, () => Math.floor(rand() * 256)));
      else if (kind === 1) payload = encodeFrame({ t: "req", id: 9, op: "status" }).subarray(0, 3 + Math.floor(rand() * 5));
      else if (kind === 2) payload = Buffer.from([0xff, 0xff, 0xff, 0xf0, 1, 2, 3]);
      else payload = Buffer.concat([Buffer.from([0, 0, 0, 8]), Buffer.from("garbage!")]);
      await sendRawBytes(sock, payload);
      const c = await IpcClient.connect(sock);
      const r = await c.request("status");
      c.close();
      assert.deepEqual(r.ok ? r.result : r.error, { pong: "status" }, `seed ${seed}, round ${i}`);
    }
    assert.ok(protocolErrors >= 20, `only ${protocolErrors} protocol errors seen`);
  } finally {
    server.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("the wire is typed end to end: a status field renamed in the protocol fails the client's type check, renamed in the daemon fails the daemon's", async () => {
  const ts = await import("typescript");
  const root = path.resolve(__dirname, "../..");
  const options: import("typescript").CompilerOptions = {
    target: ts.ScriptTarget.ES2022, module: ts.ModuleKind.CommonJS, moduleResolution: ts.ModuleResolutionKind.Node10,
    lib: ["lib.es2022.d.ts"], types: ["node"], strict: true, skipLibCheck: true, noEmit: true, esModuleInterop: true,
  };
  // Type-checks the daemon and the client with one file's text replaced; returns the files with errors.
  const check = (file: string, from: string, to: string): string[] => {
    const target = path.join(root, file);
    const text = fs.readFileSync(target, "utf8");
    assert.ok(text.includes(from), `${file} no longer has ${from}`);
    const host = ts.createCompilerHost(options);
    const read = host.readFile.bind(host);
    host.readFile = (f) => (path.resolve(f) === target ? text.replace(from, to) : read(f));
    const program = ts.createProgram([path.join(root, "daemon/daemon.ts"), path.join(root, "client/ktld.ts"), path.join(root, "client/tui.ts")], options, host);
    return [...new Set(ts.getPreEmitDiagnostics(program).flatMap((d) => (d.file ? [path.relative(root, d.file.fileName)] : [])))].sort();
  };
  assert.deepEqual(check("src/protocol.ts", "export const PROTOCOL_VERSION", "export const PROTOCOL_VERSION"), [], "the unchanged sources do not type-check");
  const renamed = check("src/protocol.ts", "  readonly stale: boolean;\n  uptimeMs", "  readonly vmlinuxStale: boolean;\n  uptimeMs");
  assert.ok(renamed.includes("client/views.ts"), `the client did not notice: ${renamed.join(", ")}`);
  assert.ok(renamed.includes("daemon/daemon.ts"), `the daemon did not notice: ${renamed.join(", ")}`);
  assert.deepEqual(check("daemon/daemon.ts", "stale: this.scheduler.stale,", "staleness: this.scheduler.stale,"), ["daemon/daemon.ts"]);
});
