// The team-shared native cache (src/sharedcache.ts) on a real redis-server that the test
// starts on 127.0.0.1: CI fills it from one checkout, a second checkout at another path
// takes its natives from it, a damaged entry never reaches a build, and the server killed in
// the middle of a build leaves the local cache alone and a correct build.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { parseReply, RedisClient } from "../src/resp";
import { execBounded, fixtureCopy, freePort, hashesOf, spawnBoundedAsync, startServer } from "./helpers";

const KTLD = path.resolve(__dirname, "../client/ktld.js");
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Report {
  ok: boolean;
  error?: string;
  backend: { compiled: number; cacheHits: number; sharedHits: number; jobs: { object: string; action: string; reason: string }[] };
}

async function build(tree: string, extra: readonly string[]): Promise<{ report: Report; log: string }> {
  const r = await spawnBoundedAsync(process.execPath, [KTLD, "build", "--build-dir", tree, "--json", "-j2", ...extra], { env: fixtureEnv(), timeout: 20 * 60_000 });
  assert.ok(r.stdout, `ktld build: ${r.stderr.slice(-3000)}`);
  const report = JSON.parse(r.stdout) as Report;
  assert.equal(report.ok, true, `${report.error}\n${r.stderr.slice(-3000)}`);
  return { report, log: r.stderr };
}

/** A fresh checkout at the same path: no state dir, no natives. */
function forget(tree: string): void {
  fs.rmSync(path.join(tree, ".ktld"), { recursive: true, force: true });
  execBounded("find", [tree, "-name", "*.thinlto-native.o", "-delete"]);
}

describe("the shared native cache on redis-server", { timeout: 60 * 60_000 }, () => {
  const a = fixtureCopy("shared-a");
  const b = fixtureCopy("shared-b");
  let port = 0;
  let server: ReturnType<typeof startServer> | undefined;
  let url = "";
  let total = 0;
  let reference = new Map<string, string>();
  after(() => server?.kill());

  const keys = () => execBounded("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "--scan", "--pattern", "ktld:be1:*"]).split("\n").filter(Boolean);

  test("CI fills it: a first build in write mode stores every native it compiles", async () => {
    port = await freePort();
    server = startServer("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], 60 * 60_000, { log: path.join(path.dirname(a), "redis.log") });
    for (let i = 0; i < 100; i++) {
      const r = await spawnBoundedAsync("redis-cli", ["-h", "127.0.0.1", "-p", String(port), "ping"], { timeout: 10_000 }).catch(() => undefined);
      if (r?.stdout.trim() === "PONG") break;
      await sleep(100);
    }
    url = `redis://127.0.0.1:${port}`;
    const { report } = await build(a, ["--shared-cache", url, "--shared-cache-write"]);
    total = report.backend.compiled + report.backend.cacheHits;
    assert.ok(report.backend.compiled > 100, `only ${report.backend.compiled} BE compiles in a first build`);
    assert.equal(report.backend.sharedHits, 0);
    assert.equal(keys().length, report.backend.compiled, "entries in the server against natives compiled");
    reference = hashesOf(a, ".thinlto-native.o");
    reference.set("vmlinux", hashFile(path.join(a, "vmlinux"))!);
  });

  const resultOf = (tree: string) => {
    const m = hashesOf(tree, ".thinlto-native.o");
    m.set("vmlinux", hashFile(path.join(tree, "vmlinux"))!);
    return m;
  };
  const differ = (tree: string) => {
    const now = resultOf(tree);
    return [...reference.keys()].filter((k) => reference.get(k) !== now.get(k));
  };

  test("a second checkout at another path takes its natives from it (read-only) and links the same vmlinux", async () => {
    assert.notEqual(a, b);
    const { report } = await build(b, ["--shared-cache", url]);
    const got = report.backend.sharedHits;
    assert.ok(got >= 0.95 * total, `${got} of ${total} natives from the shared cache`);
    assert.equal(report.backend.compiled + report.backend.cacheHits, total);
    assert.deepEqual(differ(b), [], "natives or vmlinux differ from the first checkout's");
    const stats = JSON.parse(execBounded(process.execPath, [KTLD, "cache", "stats", "--build-dir", b, "--json"])) as { hits: { local: number; shared: number } };
    assert.equal(stats.hits.shared, got);
    // Read-only: nothing was added.
    assert.equal(keys().length, total);
  });

  test("entries flipped or cut short are refused by their hash, compiled here instead, and said", async () => {
    const c = await RedisClient.connect("127.0.0.1", port, 5000);
    const [k1, k2] = keys().sort().slice(0, 2);
    const v1 = (await c.command(["GET", k1], 5000)) as Buffer;
    const flipped = Buffer.from(v1);
    flipped[flipped.length - 100] ^= 0xff;
    await c.command(["SET", k1, flipped], 5000);
    const v2 = (await c.command(["GET", k2], 5000)) as Buffer;
    await c.command(["SET", k2, v2.subarray(0, Math.floor(v2.length / 2))], 5000);
    c.close();
    forget(b);
    const { report, log } = await build(b, ["--shared-cache", url]);
    const refused = [...log.matchAll(/the shared cache's native for (\S+) was refused \(([^)]*)\)/g)];
    assert.equal(refused.length, 2, log.slice(-3000));
    assert.deepEqual(refused.map((m) => m[2]).sort(), ["its bytes do not match its hash", "its bytes do not match its hash"]);
    const compiled = report.backend.jobs.filter((j) => j.action === "compile").map((j) => j.object).sort();
    assert.deepEqual(compiled, refused.map((m) => m[1]).sort(), "what was compiled is what was refused");
    assert.equal(report.backend.sharedHits, total - 2);
    assert.deepEqual(differ(b), [], "natives or vmlinux differ after refused entries");
  });

  test("the server killed in the middle of a build: the build goes on with the local cache, one line says so, the result is right", async () => {
    // A proxy in front of the server counts its answers and kills it after the 20th.
    let answers = 0;
    let killed = false;
    const proxy = net.createServer((client) => {
      const upstream = net.connect(port, "127.0.0.1");
      let buf = Buffer.alloc(0);
      client.on("data", (d) => upstream.write(d));
      // Answers are passed on whole, one by one: none after the 20th.
      upstream.on("data", (d: Buffer) => {
        buf = Buffer.concat([buf, d]);
        for (let r = parseReply(buf); r && !killed; r = parseReply(buf)) {
          client.write(buf.subarray(0, r.end));
          buf = buf.subarray(r.end);
          if (++answers === 20) {
            killed = true;
            server!.kill();
          }
        }
      });
      const end = () => { client.destroy(); upstream.destroy(); };
      client.on("error", end);
      upstream.on("error", end);
      client.on("close", end);
      upstream.on("close", end);
    });
    const proxyPort = await new Promise<number>((resolve) => proxy.listen(0, "127.0.0.1", () => resolve((proxy.address() as net.AddressInfo).port)));
    try {
      forget(b);
      const { report, log } = await build(b, ["--shared-cache", `redis://127.0.0.1:${proxyPort}`]);
      assert.ok(killed, "the server was never killed: fewer than 20 answers");
      assert.equal(await server!.exited.then(() => true), true);
      assert.ok(report.backend.sharedHits >= 1 && report.backend.sharedHits <= 20, `${report.backend.sharedHits} shared hits`);
      assert.ok(report.backend.compiled >= 1);
      assert.equal(report.backend.compiled + report.backend.cacheHits, total);
      assert.equal([...log.matchAll(/the shared cache \S+ is not usable/g)].length, 1, log.slice(-3000));
      assert.deepEqual(differ(b), [], "natives or vmlinux differ after the server died");
    } finally {
      proxy.close();
    }
  });
});
