// Shared by the tests that run on the real kernel fixture.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { spawn, spawnSync, SpawnSyncOptions, SpawnSyncReturns } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";
import { copyFixture, fixtureCacheRoot, overlayFixture, releaseFixture, fixtureEnv, fixtureKey, FixtureVariant, MAKE_ARGS } from "../scripts/fixture";
import { hashBytes, hashFile } from "../src/base/hash";
import type { BuildJson } from "../src/protocol";
import { KILL_POINTS, KillPoint } from "../src/base/killpoint";

export const KTLD = path.resolve(__dirname, "../client/ktld.js");

/** Every child a test starts goes through `spawnBounded` or `execBounded` (test/unit.test.ts
 * checks that no test file calls child_process itself): a hang then fails that one test with
 * the command line that hung, instead of stalling CI. */
export const SPAWN_TIMEOUT_MS = 10 * 60_000;

export class SpawnTimeout extends Error {}

function commandLine(cmd: string, args: readonly string[]): string {
  return [cmd, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`)).join(" ").slice(0, 2000);
}

/** spawnSync with a timeout (default SPAWN_TIMEOUT_MS, SIGKILL when it passes). */
export function spawnBounded(cmd: string, args: readonly string[], opts: SpawnSyncOptions = {}): SpawnSyncReturns<string> {
  const timeout = opts.timeout ?? SPAWN_TIMEOUT_MS;
  const r = spawnSync(cmd, args, { encoding: "utf8", maxBuffer: 256 << 20, ...opts, timeout, killSignal: "SIGKILL" }) as SpawnSyncReturns<string>;
  if ((r.error as NodeJS.ErrnoException | undefined)?.code === "ETIMEDOUT") {
    throw new SpawnTimeout(`timed out after ${Math.round(timeout / 1000)} s: ${commandLine(cmd, args)}\n${String(r.stdout ?? "").slice(-2000)}${String(r.stderr ?? "").slice(-2000)}`);
  }
  return r;
}

/** execFileSync's contract on top of spawnBounded: stdout, and an error on a non-zero exit. */
export function execBounded(cmd: string, args: readonly string[], opts: SpawnSyncOptions = {}): string {
  const r = spawnBounded(cmd, args, opts);
  if (r.error) throw new Error(`${commandLine(cmd, args)}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`${commandLine(cmd, args)} exited ${r.status ?? r.signal}:\n${String(r.stderr ?? "").slice(-4000)}`);
  return String(r.stdout ?? "");
}

/** A private copy of the built fixture, removed when the process exits. */
export function fixtureCopy(name: string, variant: FixtureVariant = "thin"): string {
  const root = fs.mkdtempSync(path.join(process.env.KTLD_TEST_TMP ?? os.tmpdir(), `ktld-${name}-`));
  // KTLD_SOAK_KEEP=1 keeps the copies (a replay of a failure, to look at).
  const dest = path.join(root, "linux");
  if (!process.env.KTLD_SOAK_KEEP) process.on("exit", () => {
    releaseFixture(dest);
    fs.rmSync(root, { recursive: true, force: true });
  });
  return placeFixture(dest, variant);
}

/** The fixture (or `tree`) at `dest`: an overlay on it where this process may mount one, a copy
 * otherwise. */
function placeFixture(dest: string, variant: FixtureVariant, tree?: string): string {
  return overlayFixture(dest, variant, tree) ?? copyFixture(dest, variant, tree);
}

/** The compiled code of ktld itself (not of its tests): what a primed fixture is keyed by. */
function ktldCodeHash(): string {
  const h = createHash("sha256");
  const walk = (dir: string): void => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith(".js")) h.update(path.relative(DIST, p)).update("\0").update(fs.readFileSync(p)).update("\0");
    }
  };
  for (const d of ["src", "daemon", "client"]) walk(path.join(DIST, d));
  return h.digest("hex").slice(0, 16);
}
const DIST = path.resolve(__dirname, "..");

/** The fixture after ktld's first build on make's tree (`ktld build --json`, its state dir
 * `.ktld` inside), made once per fixture and version of ktld's code under the fixture cache:
 * the test files that start from a tree ktld has linked do not each repeat that first build
 * (3-4 minutes on the developer fixture, the most expensive step of a test run). Returns a
 * private copy and the report of that first build.
 *
 * The copy is always at one path, `<tmp>/ktld-primed-<variant>/linux`, where the primed tree
 * was built: a native's debug info names the directory it was compiled in, so ktld's cache keys
 * include the build dir, and the tree's state is current only there. One test file at a time
 * holds it (npm test runs the files one by one); a second one is refused while the first runs. */
export function primedCopy(variant: FixtureVariant = "dev"): { buildDir: string; first: BuildJson } {
  const home = path.join(process.env.KTLD_TEST_TMP ?? os.tmpdir(), `ktld-primed-${variant}`);
  const owner = `${home}.owner`;
  const held = Number.parseInt(fs.existsSync(owner) ? fs.readFileSync(owner, "utf8") : "", 10);
  if (held && held !== process.pid && fs.existsSync(`/proc/${held}`)) throw new Error(`${home} is in use by test process ${held}: primed copies of one fixture are used one test file at a time`);
  fs.writeFileSync(owner, String(process.pid));
  const release = () => {
    releaseFixture(path.join(home, "linux"));
    fs.rmSync(home, { recursive: true, force: true });
  };
  release();
  if (!process.env.KTLD_SOAK_KEEP) process.on("exit", release);
  process.on("exit", () => fs.rmSync(owner, { force: true }));
  const prefix = `${fixtureKey(variant)}-ktld-`;
  const cache = path.join(fixtureCacheRoot(), `${prefix}${ktldCodeHash()}`);
  const tree = path.join(cache, "linux");
  if (!fs.existsSync(path.join(cache, "READY"))) {
    // Older primed trees of this fixture (another version of ktld) go: one is kept.
    for (const e of fs.readdirSync(fixtureCacheRoot())) if (e.startsWith(prefix)) fs.rmSync(path.join(fixtureCacheRoot(), e), { recursive: true, force: true });
    const buildDir = placeFixture(path.join(home, "linux"), variant);
    const first = ktldBuild(buildDir, [], fixtureEnv(variant));
    fs.mkdirSync(cache, { recursive: true });
    fs.writeFileSync(path.join(cache, "first.json"), JSON.stringify(first));
    execBounded("cp", ["-a", path.join(home, "linux"), tree], { timeout: 10 * 60_000 });
    fs.writeFileSync(path.join(cache, "READY"), `${new Date().toISOString()}\n`);
    return { buildDir, first };
  }
  // The primed tree's records name `home` already: copied back to where they point.
  const buildDir = placeFixture(path.join(home, "linux"), variant, tree);
  return { buildDir, first: JSON.parse(fs.readFileSync(path.join(cache, "first.json"), "utf8")) as BuildJson };
}

export interface KtldRun {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

export function ktld(args: readonly string[], env: NodeJS.ProcessEnv = fixtureEnv(), timeout = SPAWN_TIMEOUT_MS): KtldRun {
  const r = spawnBounded(process.execPath, [KTLD, ...args], { env, timeout });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** `ktld build --json`: the daemon's and the one-shot build's documented object. */
export type { BuildJson };

/** `ktld build --json`; fails the test with ktld's stderr if it did not exit 0. */
export function ktldBuild(tree: string, extra: readonly string[] = [], env: NodeJS.ProcessEnv = fixtureEnv()): BuildJson {
  const r = ktld(["build", "--build-dir", tree, "--json", ...extra], env);
  if (r.status !== 0) {
    let why = r.stdout.slice(-2000);
    try {
      const j = JSON.parse(r.stdout) as BuildJson;
      why = `${j.error ?? ""}\n${(j.diagnostics ?? "").slice(-3000)}`;
    } catch { /* not JSON */ }
    throw new Error(`ktld build exited ${r.status}: ${why}\n--- stderr:\n${r.stderr.slice(-2000)}`);
  }
  return JSON.parse(r.stdout) as BuildJson;
}

export function make(tree: string, targets: readonly string[]): void {
  const r = spawnBounded("make", [...MAKE_ARGS, "-s", ...targets], { cwd: tree, env: fixtureEnv() });
  if (r.status !== 0) throw new Error(`make ${targets.join(" ")} failed:\n${r.stderr.slice(-4000)}`);
}

/** Content hashes of every file under `tree` whose name ends in `suffix`. */
export function hashesOf(tree: string, suffix: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
      const p = path.join(dir, e.name);
      if (e.isDirectory()) {
        if (e.name !== ".ktld" && e.name !== ".git") walk(p);
      } else if (e.name.endsWith(suffix)) {
        out.set(path.relative(tree, p), hashFile(p)!);
      }
    }
  };
  walk(tree);
  return out;
}

export function changedKeys(before: Map<string, string>, after: Map<string, string>): string[] {
  return [...after.keys()].filter((k) => before.get(k) !== after.get(k)).sort();
}

/** Replaces the first occurrence of `anchor` with `replacement` in a file. */
export function editFile(file: string, anchor: string, replacement: string): void {
  const text = fs.readFileSync(file, "utf8");
  if (!text.includes(anchor)) throw new Error(`${file}: no '${anchor}'`);
  fs.writeFileSync(file, text.replace(anchor, replacement));
}

/** A deterministic PRNG, so a failure can be replayed from its seed. */
export function prng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}


/** Writes raw bytes to a unix socket, then hangs up (a client gone bad). */
export function sendRawBytes(sock: string, payload: Buffer, holdMs = 25): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect(sock, () => {
      s.write(payload);
      setTimeout(() => s.destroy(), holdMs);
    });
    s.on("error", () => resolve());
    s.on("close", () => resolve());
  });
}

/** Boots a vmlinux under qemu (PVH entry, serial console) and returns what it printed:
 * without an initramfs, up to the panic for want of a root fs. */
export function bootLog(vmlinux: string, opts: { initrd?: string; append?: string } = {}): string {
  const boot = spawnBounded("qemu-system-x86_64", [
    "-kernel", vmlinux, "-nographic", "-no-reboot", "-m", "256", ...(opts.initrd ? ["-initrd", opts.initrd] : []),
    "-append", `console=ttyS0 panic=-1${opts.append ? ` ${opts.append}` : ""}`, "-serial", "mon:stdio", "-display", "none",
  ], { encoding: "latin1", timeout: 120_000 });
  return `${boot.stdout}${boot.stderr}`;
}

/** An uncompressed cpio initramfs with Debian's busybox-static whose /init runs `script`
 * (busybox sh; /proc and /sys mounted first; qemu -no-reboot exits at its `reboot -f`),
 * and `files` (path in the image → file on the host). */
export function busyboxInitramfs(file: string, script: string, files: Record<string, string> = {}): string {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-initramfs-"));
  try {
    for (const d of ["bin", "dev", "proc", "sys"]) fs.mkdirSync(path.join(root, d));
    fs.copyFileSync("/bin/busybox", path.join(root, "bin/busybox"));
    fs.chmodSync(path.join(root, "bin/busybox"), 0o755);
    for (const [inImage, host] of Object.entries(files)) {
      fs.mkdirSync(path.dirname(path.join(root, inImage)), { recursive: true });
      fs.copyFileSync(host, path.join(root, inImage));
    }
    fs.writeFileSync(path.join(root, "init"),
      `#!/bin/busybox sh\n/bin/busybox mount -t proc proc /proc\n/bin/busybox mount -t sysfs sysfs /sys\n${script}\n/bin/busybox reboot -f\n`, { mode: 0o755 });
    // Without /dev/console the kernel gives init no stdout (tests run as root: mknod works).
    execBounded("mknod", [path.join(root, "dev/console"), "c", "5", "1"]);
    execBounded("sh", ["-c", `cd '${root}' && find . | cpio -o -H newc --quiet > '${file}'`]);
    return file;
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

/** An asynchronous child with a timeout (SIGKILL to its process group when it passes). */
export function spawnBoundedAsync(cmd: string, args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; timeout?: number } = {}): Promise<{ status: number | null; stdout: string; stderr: string }> {
  const timeout = opts.timeout ?? SPAWN_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"], detached: true });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      try {
        process.kill(-child.pid!, "SIGKILL");
      } catch { /* gone */ }
    }, timeout);
    child.stdout.on("data", (d: Buffer) => out.push(d));
    child.stderr.on("data", (d: Buffer) => err.push(d));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`${commandLine(cmd, args)}: ${e.message}`));
    });
    child.on("close", (status) => {
      clearTimeout(timer);
      const stderr = Buffer.concat(err).toString();
      if (timedOut) reject(new SpawnTimeout(`timed out after ${Math.round(timeout / 1000)} s: ${commandLine(cmd, args)}\n${stderr.slice(-2000)}`));
      else resolve({ status, stdout: Buffer.concat(out).toString(), stderr });
    });
  });
}

/** A server in the background (redis-server, distccd): killed when `ms` pass at the latest,
 * or by `kill()`; `pid` to signal it. Started on 127.0.0.1 by the caller's arguments. */
export function startServer(cmd: string, args: readonly string[], ms: number, opts: { cwd?: string; log?: string; env?: NodeJS.ProcessEnv } = {}): { pid: number; kill: () => void; exited: Promise<number | null> } {
  const out = opts.log ? fs.openSync(opts.log, "a") : "ignore";
  const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env ?? process.env, stdio: ["ignore", out, out], detached: true });
  if (typeof out === "number") fs.closeSync(out);
  const kill = () => {
    try {
      process.kill(-child.pid!, "SIGKILL");
    } catch { /* gone */ }
  };
  const timer = setTimeout(kill, ms);
  timer.unref();
  process.on("exit", kill);
  const exited = new Promise<number | null>((resolve) => child.on("close", (code) => {
    clearTimeout(timer);
    resolve(code);
  }));
  return { pid: child.pid!, kill, exited };
}

/** A free TCP port on 127.0.0.1 (asked of the kernel, then released). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(port));
    });
  });
}

/** `n` busy loops in the background (a parallel CPU load), each killed after `ms` at the
 * latest; `stop()` kills them now. */
export function cpuLoad(n: number, ms: number): { stop: () => void } {
  const kids = Array.from({ length: n }, () => spawn("sh", ["-c", "while :; do :; done"], { stdio: "ignore", detached: true }));
  const stop = () => {
    for (const k of kids) {
      try {
        process.kill(-k.pid!, "SIGKILL");
      } catch { /* gone */ }
    }
  };
  const timer = setTimeout(stop, ms);
  timer.unref();
  return { stop: () => { clearTimeout(timer); stop(); } };
}

/** Live (not zombie) processes whose command line holds every one of `words`. */
export function processesWith(...words: string[]): number[] {
  const out: number[] = [];
  for (const d of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(d) || Number(d) === process.pid) continue;
    try {
      const argv = fs.readFileSync(`/proc/${d}/cmdline`, "utf8").split("\0");
      if (!words.every((w) => argv.includes(w))) continue;
      const stat = fs.readFileSync(`/proc/${d}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z") out.push(Number(d));
    } catch { /* gone */ }
  }
  return out;
}

/** The named kill points (src/base/killpoint.ts) a build of the thin fixture passes after a
 * body edit: the fixed ones but a boot's, and the steps of its link (no kallsyms, no BTF). */
export const THIN_KILL_POINTS: readonly KillPoint[] = [
  ...KILL_POINTS.filter((p) => p !== "boot:running"),
  "link:LD vmlinux.o", "link:OBJTOOL vmlinux.o", "link:link-vmlinux.sh", "link:LD vmlinux",
];

/** Waits (up to 5 minutes) for the daemon `pid`, aimed at a named kill point, to end, and
 * requires its own line for that point in `killLog`: the blow landed where it says. */
export async function diedAt(pid: number, point: string, killLog: string, where = ""): Promise<void> {
  const gone = () => {
    try {
      const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
      return stat.slice(stat.lastIndexOf(")") + 2)[0] === "Z";
    } catch {
      return true;
    }
  };
  const end = Date.now() + 5 * 60_000;
  while (!gone() && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  assert.ok(gone(), `${where}the daemon (pid ${pid}) still runs 5 minutes after the edit: ${point} was never reached`);
  const said = fs.existsSync(killLog) ? fs.readFileSync(killLog, "utf8").trim().split("\n") : [];
  assert.deepEqual(said, [`${point} ${pid}`], `${where}the daemon ended, but not at ${point} by its own hand`);
}

/** Live (not zombie) processes whose working dir is `dir` or under it: a daemon's compilers,
 * make and what make runs. */
export function processesIn(dir: string): number[] {
  const out: number[] = [];
  for (const p of fs.readdirSync("/proc")) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      const cwd = fs.readlinkSync(`/proc/${p}/cwd`);
      if (cwd !== dir && !cwd.startsWith(`${dir}/`)) continue;
      const stat = fs.readFileSync(`/proc/${p}/stat`, "utf8");
      if (stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z") out.push(Number(p));
    } catch { /* gone */ }
  }
  return out;
}

/** What a link's code looks like from outside: its section names, and its symbols with
 * their types and sizes (addresses and padding between input sections left out). */
export function elfShape(file: string): { sections: string[]; symbols: string[] } {
  const sections = execBounded("llvm-readelf-19", ["-S", "-W", file]).split("\n")
    .map((l) => /^\s*\[\s*\d+\]\s+(\S+)/.exec(l)?.[1]).filter((s): s is string => s !== undefined).sort();
  const symbols = execBounded("llvm-nm-19", ["-S", file]).split("\n")
    .map((l) => l.trim().split(/\s+/)).filter((f) => f.length === 4).map(([, size, type, name]) => `${name} ${type} ${size}`).sort();
  return { sections, symbols };
}

/** Each section of an ELF64 file, in order, with the hash of its bytes: what an object holds,
 * apart from where in the file its sections lie (objcopy, which pahole runs, moves them). */
export function sectionContents(file: string): string[] {
  const b = fs.readFileSync(file);
  const shoff = Number(b.readBigUInt64LE(0x28));
  const size = b.readUInt16LE(0x3a);
  const count = b.readUInt16LE(0x3c);
  const header = (i: number) => ({ name: b.readUInt32LE(shoff + i * size), type: b.readUInt32LE(shoff + i * size + 4), offset: Number(b.readBigUInt64LE(shoff + i * size + 0x18)), bytes: Number(b.readBigUInt64LE(shoff + i * size + 0x20)) });
  const names = header(b.readUInt16LE(0x3e));
  const nameOf = (at: number) => b.toString("latin1", names.offset + at, b.indexOf(0, names.offset + at));
  return Array.from({ length: count }, (_, i) => {
    const h = header(i);
    const data = h.type === 8 ? Buffer.alloc(0) : b.subarray(h.offset, h.offset + h.bytes);
    return `${nameOf(h.name)} ${h.type} ${h.bytes} ${hashBytes(data)}`;
  });
}

/** Up to 10 entries of each side that the other lacks (multisets). */
export function multisetDiff(a: readonly string[], b: readonly string[]): { onlyA: string[]; onlyB: string[] } {
  const count = new Map<string, number>();
  for (const x of a) count.set(x, (count.get(x) ?? 0) + 1);
  const onlyB: string[] = [];
  for (const x of b) {
    const n = count.get(x) ?? 0;
    if (n > 0) count.set(x, n - 1);
    else onlyB.push(x);
  }
  const onlyA = [...count].flatMap(([x, n]) => Array<string>(n).fill(x));
  return { onlyA: onlyA.slice(0, 10), onlyB: onlyB.slice(0, 10) };
}

/** Polls `fn` every 200 ms until it returns something, or fails naming `what`. */
export async function waitFor<T>(what: string, fn: () => T | undefined, timeoutMs = 180_000): Promise<T> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const v = fn();
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** `ktld status --json` of the daemon of `out`, as the caller's shape. */
export function daemonStatus<T>(out: string, env: NodeJS.ProcessEnv): T {
  const r = ktld(["status", "--build-dir", out, "--json"], env);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}

/** `ktld build --wait --json`: the daemon's build after every save so far. */
export function buildWait<T extends { id: number; ok: boolean } = { id: number; ok: boolean; error?: string; diagnostics?: string }>(out: string, env: NodeJS.ProcessEnv): T {
  const r = ktld(["build", "--wait", "--build-dir", out, "--json"], env);
  assert.ok(r.stdout, `ktld build --wait: ${r.stderr}`);
  return JSON.parse(r.stdout) as T;
}
