// Benchmark: the same edits timed as stock `make vmlinux` (in-process ThinLTO) and with
// ktld, side by side in one run, on two fresh copies of the fixture (one per side, so
// neither disturbs the other's state). Runs one side at a time.
//
//   npm run bench            (KTLD_BENCH_DIR moves the scratch copies; default: a temp dir)
//   npm run bench -- --quick (skip the one-shot table)
//   npm run bench -- --fixture dev --boot (the daemon boots each fresh kernel: save → verdict)
//   npm run bench -- --fixture dev --lto-off (a column for the same kernel without LTO, its make)
//   npm run bench -- --fixture dev --unpinned (every side in a developer's environment: no fixed
//                            KBUILD_BUILD_TIMESTAMP/VERSION, so each link writes a new UTS_VERSION)
//   npm run bench -- --dist  (the seed's dist-mode fixture: the seed's make vs ktld)
//   npm run bench -- --modules (developer fixture: ext4 edits, stock make modules vs ktld, save → fresh .ko)
//   npm run bench -- --shared (developer fixture: first builds with a cold and a warm shared cache on a local redis-server)
//   npm run bench -- --distcc [--fixture dev] (a header edit's FE replays here against through a distccd on 127.0.0.1)
import { ChildProcess, spawn, spawnSync } from "node:child_process";
import * as readline from "node:readline";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { copyFixture, fixtureEnv, FixtureVariant, MAKE_ARGS, outOfTree, REPRODUCIBLE_ENV } from "./fixture";

/** The environment of every make and ktld the bench runs: the fixture's, or with `--unpinned`
 * a developer's, without the fixture's fixed build number, time, user and host (kbuild then
 * writes a new `UTS_VERSION` into init/version-timestamp.o at every link, and runs pahole with
 * `-j`). */
function benchEnv(variant: FixtureVariant = "thin"): NodeJS.ProcessEnv {
  const env = fixtureEnv(variant);
  if (process.argv.includes("--unpinned")) for (const k of Object.keys(REPRODUCIBLE_ENV)) delete env[k];
  return env;
}
import { RawTools } from "./rawtools";
import { hashFile } from "../src/base/hash";

const KTLD = path.resolve(__dirname, "../client/ktld.js");
const ANCHOR = "void free_task(struct task_struct *tsk)\n{\n";
const HEADER = "include/linux/statfs.h";

interface KtldJson {
  id?: number;
  ok: boolean;
  frontend: { compiled: number; ms: number };
  thinlink: { ms: number };
  backend: { modules: number; compiled: number; cacheHits: number; ms: number };
  link: { ms: number; skipped: boolean; steps?: { name: string; ms: number; reason?: string }[] };
  ms: number;
}

function timed<T>(fn: () => T): [T, number] {
  const t0 = performance.now();
  const v = fn();
  return [v, (performance.now() - t0) / 1000];
}

function run(cmd: string, args: string[], cwd: string, variant: FixtureVariant = "thin"): string {
  const r = spawnSync(cmd, args, { cwd, env: benchEnv(variant), encoding: "utf8", maxBuffer: 64 << 20, timeout: 90 * 60_000, killSignal: "SIGKILL" });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

const s = (x: number) => `${x.toFixed(2)} s`;
const jobs = os.cpus().length;

class Side {
  /** The kernel sources: the build dir itself, or its parent for an O= fixture. */
  readonly src: string;
  constructor(readonly tree: string, readonly variant: FixtureVariant = "thin") {
    this.src = outOfTree(variant) ? path.dirname(tree) : tree;
  }
  file(rel: string): string {
    return path.join(this.src, rel);
  }
  make(targets: string[]): void {
    run("make", [...MAKE_ARGS, `-j${jobs}`, "-s", ...targets], this.tree, this.variant);
  }
  /** make with kbuild's lines, for counting its jobs. */
  makeVerbose(targets: string[]): string {
    return run("make", [...MAKE_ARGS, `-j${jobs}`, ...targets], this.tree, this.variant);
  }
  ktld(args: string[]): string {
    return run(process.execPath, [KTLD, ...args, "--build-dir", this.tree], this.tree, this.variant);
  }
  build(extra: string[] = []): KtldJson {
    return JSON.parse(this.ktld(["build", "--json", `-j${jobs}`, ...extra])) as KtldJson;
  }
  /** `ktld ...` without blocking this process: a LogFollower then stamps the daemon's lines
   * when they are said, not when a blocking wait ends. */
  ktldAsync(args: string[]): Promise<string> {
    return new Promise((resolve, reject) => {
      const child = spawn(process.execPath, [KTLD, ...args, "--build-dir", this.tree], { cwd: this.tree, env: benchEnv(this.variant), stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      let err = "";
      child.stdout.on("data", (d: Buffer) => { out += d.toString(); });
      child.stderr.on("data", (d: Buffer) => { err += d.toString(); });
      const timer = setTimeout(() => child.kill("SIGKILL"), 90 * 60_000);
      child.on("close", (code) => {
        clearTimeout(timer);
        if (code === 0) resolve(out);
        else reject(new Error(`bench: ktld ${args.join(" ")} exited ${code}: ${err.slice(-2000)}`));
      });
    });
  }
}

/** `ktld log -f`, started once: when the daemon said a line, with no client start in the
 * time (how a save that needs no job is timed: the daemon's answer, not a client's). */
class LogFollower {
  private readonly child: ChildProcess;
  private readonly seen: { at: number; line: string }[] = [];
  private wake?: () => void;

  constructor(side: Side) {
    this.child = spawn(process.execPath, [KTLD, "log", "-f", "--build-dir", side.tree], { env: benchEnv(side.variant), stdio: ["ignore", "pipe", "ignore"] });
    readline.createInterface({ input: this.child.stdout! }).on("line", (line) => {
      this.seen.push({ at: performance.now(), line });
      this.wake?.();
    });
  }

  /** The first line matching `re` said after `since`, and when it arrived. */
  async next(re: RegExp, since: number, timeoutMs = 30_000): Promise<{ at: number; line: string }> {
    const limit = performance.now() + timeoutMs;
    for (;;) {
      const hit = this.seen.find((l) => l.at >= since && re.test(l.line));
      if (hit) return hit;
      if (performance.now() > limit) throw new Error(`bench: the daemon did not say ${re} within ${timeoutMs / 1000} s`);
      await new Promise<void>((resolve) => {
        this.wake = resolve;
        setTimeout(resolve, 100);
      });
    }
  }

  stop(): void {
    this.child.kill();
  }
}

interface Edit {
  readonly name: string;
  readonly apply: (side: Side) => void;
  /** The objects whose FE the edit calls for (for the tool commands by hand). */
  readonly objects: readonly string[];
}

function phases(k: KtldJson): string {
  const btf = k.link.steps?.find((x) => x.name.startsWith("BTF "));
  const ks = k.link.steps?.find((x) => x.name === "kallsyms")?.reason;
  const ksNote = ks === undefined ? "" : `, ${ks.startsWith("the second link started from the last") ? "kallsyms from the last link" : "kbuild's kallsyms passes"}`;
  const btfNote = btf || ks ? ` (${btf ? `BTF ${s(btf.ms / 1000)}, ${btf.reason?.startsWith("reused") ? "reused" : btf.reason?.startsWith("pahole ran ahead") ? "pahole ahead" : "pahole"}` : ""}${ksNote})` : "";
  return `FE ${k.frontend.compiled} ${s(k.frontend.ms / 1000)}, thin-link ${s(k.thinlink.ms / 1000)}, BE ${k.backend.compiled} run/${k.backend.cacheHits} cached ${s(k.backend.ms / 1000)}, link ${k.link.skipped || !k.link.ms ? "-" : s(k.link.ms / 1000)}${btfNote}`;
}

/** ktld's link of one build, step by step: its own vmlinux.o and objtool, then link-vmlinux.sh's
 * links, BTF and the kallsyms passes (each pass's NM, KSYMS and AS together), and the rest. */
export const LINK_SPLIT_HEADER = ["vmlinux.o", "LD image ahead", "objtool", "LD .tmp_vmlinux1", "wait for pahole ahead", "BTF", "kallsyms passes", "LD .tmp_vmlinux2/3", "LD vmlinux", "BTFIDS", "SORTTAB", "the rest", "link"];

export function linkSplit(steps: readonly { name: string; ms: number }[], linkMs: number): string[] {
  const sum = (f: (n: string) => boolean) => steps.filter((x) => f(x.name)).reduce((t, x) => t + x.ms, 0);
  const cols = [
    (n: string) => n === "LD vmlinux.o", (n: string) => n === "LD .tmp_vmlinux1 ahead", (n: string) => n === "OBJTOOL vmlinux.o", (n: string) => n === "LD .tmp_vmlinux1",
    (n: string) => n === "pahole ahead", (n: string) => n.startsWith("BTF "), (n: string) => /^(NM|KSYMS|AS) \.tmp_vmlinux/.test(n), (n: string) => /^LD \.tmp_vmlinux[23]$/.test(n),
    (n: string) => n === "LD vmlinux", (n: string) => n.startsWith("BTFIDS "), (n: string) => n.startsWith("SORTTAB "),
  ];
  const parts = cols.map(sum);
  // Steps that run beside the final link (modules.builtin) are not on the way to vmlinux.
  const rest = Math.max(0, linkMs - parts.reduce((a, b) => a + b, 0));
  return [...parts, rest, linkMs].map((ms) => s(ms / 1000));
}

function table(title: string, header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) => r.map((cell, c) => (cell ?? "").padEnd(widths[c])).join(" | ");
  return `\n${title}\n\n${line(header)}\n${widths.map((w) => "-".repeat(w)).join("-|-")}\n${rows.map(line).join("\n")}\n`;
}


/** Where the daemon's time went, per edit: the tools that ran, and ktld's own time by section. */
function profileTable(profiles: readonly [string, ProfileJson][]): string {
  const secs = (ms: number | undefined) => (ms === undefined ? "-" : `${(ms / 1000).toFixed(3)}`);
  const sections = [...new Set(profiles.flatMap(([, p]) => Object.keys(p.own)))].sort((a, b) => Math.max(...profiles.map(([, p]) => p.own[b] ?? 0)) - Math.max(...profiles.map(([, p]) => p.own[a] ?? 0)));
  const toolNames = [...new Set(profiles.flatMap(([, p]) => Object.keys(p.tools)))];
  return table("where the daemon's time went (seconds; a build's wall time = time some tool ran + ktld's own time):",
    ["", ...profiles.map(([n]) => n)],
    [
      ["build wall time", ...profiles.map(([, p]) => secs(p.wallMs))],
      ["  tools running", ...profiles.map(([, p]) => secs(p.toolMs))],
      ...toolNames.map((t) => [`    ${t}`, ...profiles.map(([, p]) => secs(p.tools[t]))]),
      ["  ktld's own", ...profiles.map(([, p]) => secs(p.ownMs))],
      ...sections.map((n) => [`    ${n}`, ...profiles.map(([, p]) => secs(p.own[n]))]),
    ]);
}

/** The seed's own make (CONFIG_LTO_CLANG_THIN_DIST) against ktld on the same tree kind. */
async function mainDist(root: string, log: (m: string) => void): Promise<void> {
  const variant: FixtureVariant = "dist";
  log(`copying the dist-mode fixture three times under ${root}`);
  const seedMake = new Side(copyFixture(path.join(root, "make"), variant));
  const k = new Side(copyFixture(path.join(root, "ktld"), variant));
  const raw = new Side(copyFixture(path.join(root, "raw"), variant));
  for (const side of [seedMake, k, raw]) side.make(["vmlinux"]);
  const tools = new RawTools(raw.tree, benchEnv(variant), MAKE_ARGS, jobs);
  await tools.prepare();
  const headerUsers = usersOf(k.tree, HEADER);
  const forkOriginal = fs.readFileSync(seedMake.file("kernel/fork.c"), "utf8");
  const beLines = (out: string) => out.split("\n").filter((l) => /^\s+CC\s+\S+\.thinlto-native\.o$/.test(l)).length;
  const [first, firstS] = timed(() => k.build());
  const out: string[] = [];
  out.push(`ktld benchmark: tinyconfig + CONFIG_LTO_CLANG_THIN_DIST (the seed backported to 6.12), ${first.backend.modules} modules, clang-19, -j${jobs}, ${os.cpus()[0].model}`);
  out.push(`first ktld build on make's dist-mode tree: ${s(firstS)} [${phases(first)}] (kbuild's natives taken as they are)`);
  k.ktld(["start", `-j${jobs}`, "--idle-timeout", "3600"]);
  k.ktld(["build", "--wait", "--json"]);
  const rows: string[][] = [];
  const profiles: [string, ProfileJson][] = [];
  const headerOriginal = fs.readFileSync(seedMake.file(HEADER), "utf8");
  const edits: [string, string, string, string[]][] = [
    ["one-function edit in kernel/fork.c", "kernel/fork.c", forkOriginal.replace(ANCHOR, `${ANCHOR}\tpr_info("ktld bench dist\\n");\n`), ["kernel/fork.o"]],
    ["undo of that edit", "kernel/fork.c", forkOriginal, ["kernel/fork.o"]],
    [`edit of ${HEADER} (${headerUsers.length} users)`, HEADER, `${headerOriginal}extern int ktld_bench_decl;\n`, headerUsers],
    ["undo of the header edit", HEADER, headerOriginal, headerUsers],
    ["save of kernel/fork.c with the same bytes", "kernel/fork.c", forkOriginal, []],
  ];
  const handRows: string[][] = [];
  for (const [name, file, text, objects] of edits) {
    log(`dist: ${name}`);
    fs.writeFileSync(seedMake.file(file), text);
    fs.writeFileSync(raw.file(file), text);
    const byHand = objects.length ? await tools.rebuild(objects) : undefined;
    if (byHand) handRows.push([name, ...[byHand.fe, byHand.thinLink, byHand.backend, byHand.archive, byHand.vmlinuxO, byHand.objtool, byHand.final, byHand.total].map((ms) => s(ms / 1000))]);
    const [makeOut, makeS] = timed(() => seedMake.makeVerbose(["vmlinux"]));
    const before = (JSON.parse(k.ktld(["status", "--json"])) as { history: { id: number }[] }).history[0]?.id;
    const t0 = performance.now();
    fs.writeFileSync(k.file(file), text);
    const r = JSON.parse(k.ktld(["build", "--wait", "--json"])) as KtldJson & { profile?: ProfileJson };
    const kS = (performance.now() - t0) / 1000;
    const kJobs = r.id === before ? 0 : r.backend.compiled;
    if (r.profile && r.id !== before) profiles.push([name, r.profile]);
    const handS = byHand ? byHand.total / 1000 : undefined;
    rows.push([name, s(makeS), String(beLines(makeOut)), handS === undefined ? "-" : `${s(handS)} (BE ${byHand!.backendJobs})`, s(kS), String(kJobs),
      handS === undefined ? "-" : `${(kS / handS).toFixed(2)}x`, `${(makeS / kS).toFixed(1)}x`, r.id === before ? "no job: content unchanged" : phases(r)]);
  }
  k.ktld(["stop"]);
  out.push(table("the seed's make vmlinux (dist mode), its commands by hand (scripts/rawtools.ts), the ktld daemon, from the save to a fresh vmlinux:",
    ["change", "seed's make", "its BE jobs", "seed's commands by hand", "ktld daemon", "ktld BE jobs", "ktld / by hand", "speed-up vs make", "ktld phases"], rows));
  out.push(table("the seed's commands by hand, by step:", ["change", "FE", "thin-link", "BE", "vmlinux.a", "vmlinux.o", "objtool", "kbuild's final steps", "total"], handRows));
  if (process.argv.includes("--profile")) out.push(profileTable(profiles));
  process.stdout.write(`${out.join("\n")}\n`);
}

/** Kernel modules: edits in ext4 (=m) on the developer fixture. Stock `make modules` (the FE,
 * then kbuild's in-process ThinLTO of the whole module inside ld -r, modpost, the .ko link, BTF),
 * the same module's work by hand with the raw tools, and the ktld daemon, from the save to a
 * fresh ext4.ko. */
async function mainModules(root: string, log: (m: string) => void): Promise<void> {
  const variant: FixtureVariant = "dev";
  log(`copying the developer fixture three times under ${root}`);
  const stock = new Side(copyFixture(path.join(root, "make"), variant), variant);
  const k = new Side(copyFixture(path.join(root, "ktld"), variant), variant);
  const raw = new Side(copyFixture(path.join(root, "raw"), variant), variant);
  // Settle the copies: whatever make finds to do after a copy, outside the timed rows.
  for (const side of [stock, k, raw]) side.make(["vmlinux", "modules"]);
  const EXT4 = "fs/ext4/ext4.o";
  const INODE = "fs/ext4/inode.c";
  const HDR = "fs/ext4/ext4.h";
  const inode = fs.readFileSync(stock.file(INODE), "utf8");
  const hdr = fs.readFileSync(stock.file(HDR), "utf8");
  const FN = "\t\t   struct buffer_head *bh, int create)\n{\n\treturn _ext4_get_block(";
  const members = fs.readFileSync(path.join(raw.tree, "fs/ext4/ext4.mod"), "utf8").split("\n").filter(Boolean);
  const hdrUsers = usersOf(raw.tree, HDR).filter((o) => members.includes(o));
  const edits: Edit[] = [
    { name: `one-function edit in ${INODE}`, objects: ["fs/ext4/inode.o"], apply: (side) => fs.writeFileSync(side.file(INODE), inode.replace(FN, FN.replace("\treturn", "\tif (iblock == 987654321)\n\t\tpr_info(\"ktld bench\\n\");\n\treturn"))) },
    { name: "undo of that edit", objects: ["fs/ext4/inode.o"], apply: (side) => fs.writeFileSync(side.file(INODE), inode) },
    { name: `edit of ${HDR} (${hdrUsers.length} users)`, objects: hdrUsers, apply: (side) => fs.writeFileSync(side.file(HDR), `${hdr}extern int ktld_bench_decl;\n`) },
    { name: "undo of the header edit", objects: hdrUsers, apply: (side) => fs.writeFileSync(side.file(HDR), hdr) },
  ];
  const tools = new RawTools(raw.tree, benchEnv(variant), MAKE_ARGS, jobs);
  tools.captureEnv();
  log("by hand: ext4's first distributed build (untimed)");
  const firstByHand = await tools.prepareModule(EXT4);
  log("ktld daemon: start and its first build (vmlinux and every module)");
  const [, startS] = timed(() => k.ktld(["start", `-j${jobs}`, "--idle-timeout", "3600"]));
  const [first, firstS] = timed(() => JSON.parse(k.ktld(["build", "--wait", "--json"])) as KtldJson & { kernelModules: ModuleJson[] });
  const out: string[] = [];
  out.push(`ktld benchmark, kernel modules: the developer fixture (ext4, jbd2, mbcache, loop, crc32c... as =m), clang-19, -j${jobs}, ${os.cpus()[0].model}`);
  out.push(`daemon start ${s(startS)}, its first build ${s(firstS)} (${first.kernelModules.length} modules made; ext4's by hand: ${s(firstByHand.total / 1000)}, BE ${firstByHand.backendJobs})`);
  const rows: string[][] = [];
  const handRows: string[][] = [];
  for (const e of edits) {
    log(`modules: ${e.name}`);
    e.apply(stock);
    const [makeOut, makeS] = timed(() => stock.makeVerbose(["modules"]));
    const makeLto = makeOut.split("\n").filter((l) => /^\s+(CC \[M\]|LD \[M\])\s/.test(l)).length;
    e.apply(raw);
    const byHand = await tools.rebuildModule(EXT4, e.objects);
    handRows.push([e.name, ...[byHand.fe, byHand.thinLink, byHand.backend, byHand.link, byHand.objtool, byHand.final, byHand.total].map((ms) => s(ms / 1000))]);
    const t0 = performance.now();
    e.apply(k);
    const r = JSON.parse(k.ktld(["build", "--wait", "--json"])) as KtldJson & { kernelModules: ModuleJson[]; modulesFinal?: { ms: number } };
    const kS = (performance.now() - t0) / 1000;
    const handS = byHand.total / 1000;
    const kms = r.kernelModules.map((m) => `${m.name}: thin-link ${s(m.thinlink.ms / 1000)}, BE ${m.backend.compiled} run/${m.backend.cacheHits} cached ${s(m.backend.ms / 1000)}, ld -r ${s(m.link.ms / 1000)}`).join("; ");
    rows.push([e.name, s(makeS), String(makeLto), `${s(handS)} (BE ${byHand.backendJobs})`, s(kS), `${(kS / handS).toFixed(2)}x`, `${(makeS / kS).toFixed(1)}x`,
      r.ok ? `FE ${r.frontend.compiled} ${s(r.frontend.ms / 1000)}; ${kms}; modpost+.ko ${s((r.modulesFinal?.ms ?? 0) / 1000)}; vmlinux ${r.backend.modules ? "built" : "untouched"}` : "FAILED"]);
  }
  k.ktld(["stop"]);
  out.push(table("from the save to a fresh ext4.ko: stock make modules, the same work by hand with the raw tools (scripts/rawtools.ts), the ktld daemon (ktld build --wait returns):",
    ["change", "stock make modules", "its CC/LD [M] lines", "tool commands by hand", "ktld daemon", "ktld / by hand", "speed-up vs make", "ktld phases"], rows));
  out.push(table("the tool commands by hand, by step:", ["change", "FE", "module thin-link", "BE", "ld -r", "objtool", "modpost, .ko, BTF", "total"], handRows));
  process.stdout.write(`${out.join("\n")}\n`);
}

/** The shared cache (--shared-cache): the developer fixture's first ktld build in one checkout
 * filling a redis-server on 127.0.0.1 (cold), then the first build of a second checkout at
 * another path reading it (warm), and that checkout's first build with no shared cache. */
async function mainShared(root: string, log: (m: string) => void): Promise<void> {
  const variant: FixtureVariant = "dev";
  log(`copying the developer fixture three times under ${root}`);
  const ci = new Side(copyFixture(path.join(root, "ci"), variant), variant);
  const dev = new Side(copyFixture(path.join(root, "dev"), variant), variant);
  const alone = new Side(copyFixture(path.join(root, "alone"), variant), variant);
  const port = 20000 + Math.floor(Math.random() * 20000);
  const server = spawn("redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore", detached: true });
  const stopServer = () => { try { process.kill(-server.pid!, "SIGKILL"); } catch { /* gone */ } };
  process.on("exit", stopServer);
  for (let i = 0; i < 100 && spawnSync("redis-cli", ["-p", String(port), "ping"], { encoding: "utf8" }).stdout?.trim() !== "PONG"; i++) spawnSync("sleep", ["0.1"]);
  const url = `redis://127.0.0.1:${port}`;
  log("first build, cold shared cache (write mode)");
  const [cold, coldS] = timed(() => ci.build(["--shared-cache", url, "--shared-cache-write"]));
  const entries = spawnSync("redis-cli", ["-p", String(port), "dbsize"], { encoding: "utf8" }).stdout.trim();
  log("first build at a second path, warm shared cache (read-only)");
  const [warm, warmS] = timed(() => dev.build(["--shared-cache", url]));
  log("first build at a third path, no shared cache");
  const [none, noneS] = timed(() => alone.build());
  stopServer();
  const same = hashFile(path.join(ci.tree, "vmlinux")) === hashFile(path.join(dev.tree, "vmlinux")) && hashFile(path.join(dev.tree, "vmlinux")) === hashFile(path.join(alone.tree, "vmlinux"));
  const row = (name: string, r: KtldJson & { backend: { sharedHits?: number } }, secs: number) => [name, s(secs), String(r.backend.compiled), String(r.backend.sharedHits ?? 0), phases(r)];
  const out = [`ktld benchmark, shared cache: the developer fixture, a redis-server on 127.0.0.1, clang-19, -j${jobs}, ${os.cpus()[0].model}`];
  out.push(table(`the first ktld build of a checkout (the BE of every unit), ${entries} entries stored by the first; vmlinux of the three ${same ? "byte-identical" : "DIFFERENT"}:`,
    ["checkout", "first build", "BE compiled", "from the shared cache", "ktld phases"],
    [row("CI's, cold shared cache (--shared-cache-write)", cold, coldS), row("a developer's, another path, warm shared cache", warm, warmS), row("a developer's, no shared cache", none, noneS)]));
  process.stdout.write(`${out.join("\n")}\n`);
}

/** FE replays through distcc (--distcc): a header edit and its undo, first with the FE here,
 * then through a distccd on 127.0.0.1 with as many slots as cores (the same cores: the figure
 * is what distcc adds), on one copy with one daemon each. */
async function mainDistcc(root: string, log: (m: string) => void, variant: FixtureVariant): Promise<void> {
  const k = new Side(copyFixture(path.join(root, "ktld"), variant), variant);
  const users = usersOf(k.tree, HEADER);
  const hdr = fs.readFileSync(k.file(HEADER), "utf8");
  const port = 20000 + Math.floor(Math.random() * 20000);
  const logDir = path.join(root, "distccd");
  fs.chmodSync(root, 0o711);
  fs.mkdirSync(logDir, { mode: 0o777 });
  fs.chmodSync(logDir, 0o777);
  const server = spawn("distccd", ["--no-detach", "--daemon", "--listen", "127.0.0.1", "--port", String(port), "--allow", "127.0.0.1", "--jobs", String(jobs),
    "--log-file", path.join(logDir, "log"), "--log-level", "info"], { stdio: "ignore", detached: true });
  const stopServer = () => { try { process.kill(-server.pid!, "SIGKILL"); } catch { /* gone */ } };
  process.on("exit", stopServer);
  spawnSync("sleep", ["1"]);
  const rows: string[][] = [];
  for (const mode of ["here", "distcc"] as const) {
    if (mode === "distcc") process.env.DISTCC_HOSTS = `127.0.0.1:${port}/${jobs}`;
    log(`daemon with the FE ${mode === "here" ? "here" : "through distccd"}: start and its first build`);
    k.ktld(["start", `-j${jobs}`, "--idle-timeout", "3600", ...(mode === "distcc" ? ["--distcc"] : [])]);
    k.ktld(["build", "--wait", "--json"]);
    for (const [name, text] of [[`edit of ${HEADER} (${users.length} users)`, `${hdr}extern int ktld_bench_${mode};\n`], ["its undo", hdr]] as const) {
      log(`${mode}: ${name}`);
      const t0 = performance.now();
      fs.writeFileSync(k.file(HEADER), text);
      const r = JSON.parse(k.ktld(["build", "--wait", "--json"])) as KtldJson & { frontend: { remote?: number; fallbacks?: unknown[] } };
      const secs = (performance.now() - t0) / 1000;
      rows.push([name, mode === "here" ? "here" : `distccd on 127.0.0.1 (${jobs} slots)`, String(r.frontend.compiled), s(r.frontend.ms / 1000),
        mode === "distcc" ? `${r.frontend.remote ?? 0} remote, ${r.frontend.fallbacks?.length ?? 0} fell back` : "-", s(secs), r.ok ? phases(r) : "FAILED"]);
    }
    k.ktld(["stop"]);
  }
  stopServer();
  const out = [`ktld benchmark, FE through distcc: the ${variant} fixture, clang-19, -j${jobs}, ${os.cpus()[0].model}`];
  out.push(table("save → fresh vmlinux, the daemon's FE replays here and through distccd on the same machine:",
    ["change", "FE", "FE jobs", "FE time", "through distcc", "build", "ktld phases"], rows));
  process.stdout.write(`${out.join("\n")}\n`);
}

interface ModuleJson { name: string; thinlink: { ms: number }; backend: { compiled: number; cacheHits: number; ms: number }; link: { ms: number } }

interface ProfileJson { wallMs: number; toolMs: number; ownMs: number; own: Record<string, number>; tools: Record<string, number> }

/** RSS of a process, anonymous and file-backed apart (MiB). */
function rssOf(pid: number): { anon: number; file: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`${k}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024;
  return { anon: kb("RssAnon"), file: kb("RssFile") + kb("RssShmem") };
}

/** Objects whose recorded dependencies (kbuild's .cmd files) name `rel`: the FE an edit of it calls for. */
function usersOf(tree: string, rel: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of fs.readdirSync(path.join(tree, dir), { withFileTypes: true })) {
      const p = dir ? `${dir}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (!e.name.startsWith(".") && e.name !== "tools" && e.name !== "source") walk(p);
      } else if (/^\..*\.o\.cmd$/.test(e.name) && !e.name.endsWith(".mod.o.cmd")) {
        const text = fs.readFileSync(path.join(tree, p), "utf8");
        if (text.split(/\s+/).some((w) => w === rel || w.endsWith(`/${rel}`) || w === `$(srctree)/${rel}`)) {
          out.push(path.join(dir, e.name.slice(1, -".cmd".length)));
        }
      }
    }
  };
  walk("");
  return out.sort();
}

async function main(): Promise<void> {
  const quick = process.argv.includes("--quick");
  const wantProfile = process.argv.includes("--profile");
  const root = fs.mkdtempSync(path.join(process.env.KTLD_BENCH_DIR ?? os.tmpdir(), "ktld-bench-"));
  process.on("exit", () => fs.rmSync(root, { recursive: true, force: true }));
  const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
  if (process.argv.includes("--dist")) return await mainDist(root, log);
  if (process.argv.includes("--modules")) return await mainModules(root, log);
  if (process.argv.includes("--shared")) return await mainShared(root, log);
  const fx = process.argv.indexOf("--fixture");
  const variant: FixtureVariant = fx > 0 ? (process.argv[fx + 1] as FixtureVariant) : "thin";
  if (process.argv.includes("--distcc")) return await mainDistcc(root, log, variant);
  if (variant !== "thin" && variant !== "dev" && variant !== "defconfig" && variant !== "thin61") throw new Error(`--fixture thin|dev|defconfig|thin61 (dist: --dist)`);
  // --one-edit (the defconfig one-off): stock make against the daemon for a function edit and
  // its undo, no tool commands by hand (a second full BE of a big tree).
  const oneEdit = process.argv.includes("--one-edit");
  log(`copying the ${variant} fixture ${oneEdit ? "twice" : "three times"} under ${root}`);
  const stock = new Side(copyFixture(path.join(root, "make"), variant), variant);
  const k = new Side(copyFixture(path.join(root, "ktld"), variant), variant);
  const raw = oneEdit ? undefined : new Side(copyFixture(path.join(root, "raw"), variant), variant);
  // --lto-off (developer fixture): the same kernel without LTO, as developers build it while
  // they iterate, timed with its own make (the fixture dev-nolto, built once per machine).
  const ltoOff = process.argv.includes("--lto-off");
  if (ltoOff && variant !== "dev" && variant !== "defconfig") throw new Error("--lto-off goes with --fixture dev or defconfig");
  const noltoVariant = variant === "defconfig" ? "defconfig-nolto" : "dev-nolto";
  const nolto = ltoOff ? new Side(copyFixture(path.join(root, "nolto"), noltoVariant), noltoVariant) : undefined;
  // Settle the copies: whatever make finds to do after a copy, outside the timed rows.
  for (const side of [stock, k, ...(raw ? [raw] : []), ...(nolto ? [nolto] : [])]) side.make(["vmlinux"]);
  const FORK = "kernel/fork.c";
  const forkOriginal = fs.readFileSync(stock.file(FORK), "utf8");
  const headerOriginal = fs.readFileSync(stock.file(HEADER), "utf8");
  const headerUsers = usersOf(k.tree, HEADER);
  const fnEdit = (tag: string): Edit => ({
    name: `one-function edit in ${FORK}`, objects: ["kernel/fork.o"],
    apply: (side) => fs.writeFileSync(side.file(FORK), forkOriginal.replace(ANCHOR, `${ANCHOR}\tpr_info("ktld bench ${tag}\\n");\n`)),
  });
  const undo: Edit = { name: "undo of that edit", objects: ["kernel/fork.o"], apply: (side) => fs.writeFileSync(side.file(FORK), forkOriginal) };
  const sameBytes: Edit = { name: `save of ${FORK} with the same bytes`, objects: [], apply: (side) => fs.writeFileSync(side.file(FORK), fs.readFileSync(side.file(FORK))) };
  const header: Edit = { name: `edit of ${HEADER} (${headerUsers.length} users)`, objects: headerUsers, apply: (side) => fs.writeFileSync(side.file(HEADER), `${headerOriginal}extern int ktld_bench_decl;\n`) };
  const headerUndo: Edit = { name: `undo of the header edit`, objects: headerUsers, apply: (side) => fs.writeFileSync(side.file(HEADER), headerOriginal) };

  const stockTime = (e: Edit) => {
    e.apply(stock);
    return timed(() => stock.make(["vmlinux"]))[1];
  };

  log("first ktld build (BE of every module)");
  const [first, firstS] = timed(() => k.build());
  const out: string[] = [];
  const described = { thin: "tinyconfig + CONFIG_LTO_CLANG_THIN", dev: "the developer fixture (tinyconfig + kvm_guest + ThinLTO, modules, MODVERSIONS, kallsyms, DWARF5, BTF, O=)", dist: "", defconfig: "x86_64_defconfig + CONFIG_LTO_CLANG_THIN, O=", thin61: "Linux 6.1 LTS, tinyconfig + CONFIG_LTO_CLANG_THIN + initramfs boot" };
  out.push(`ktld benchmark: ${described[variant]}, ${first.backend.modules} bitcode units, clang-19, -j${jobs}, ${os.cpus()[0].model}${process.argv.includes("--unpinned") ? "; a developer's environment (no fixed KBUILD_BUILD_TIMESTAMP/VERSION)" : ""}`);
  out.push(`first LTO link by ktld (BE of every unit at -j${jobs}, thin-link, link): ${s(firstS)}  [${phases(first)}]`);

  if (!quick && !oneEdit) {
    const rows: string[][] = [];
    for (const e of [fnEdit("one-shot"), sameBytes, undo]) {
      log(`one-shot: ${e.name}`);
      const makeS = stockTime(e);
      e.apply(k);
      const [, feS] = timed(() => k.make(["kernel/fork.o"]));
      const [r, kS] = timed(() => k.build());
      rows.push([e.name, s(makeS), `${s(feS + kS)} (${s(feS)} + ${s(kS)})`, `${(makeS / (feS + kS)).toFixed(1)}x`, phases(r)]);
    }
    const [noop, noopS] = timed(() => k.build());
    rows.push(["nothing changed", "-", s(noopS), "-", phases(noop)]);
    out.push(table("ktld build (one-shot), after make kernel/fork.o:", ["change", "stock make vmlinux", "make kernel/fork.o + ktld build", "speed-up", "ktld phases"], rows));
  }

  log("the tool commands by hand: a full thin-link, BE and link (the first link's yardstick)");
  const tools = raw && new RawTools(raw.tree, benchEnv(variant), MAKE_ARGS, jobs);
  const firstByHand = await tools?.prepare();
  if (firstByHand) {
    const f = firstByHand;
    out.push(`first LTO link by hand (scripts/rawtools.ts): ${s(f.total / 1000)}  [thin-link ${s(f.thinLink / 1000)}, BE ${f.backendJobs} ${s(f.backend / 1000)}, vmlinux.o ${s(f.vmlinuxO / 1000)}, objtool ${s(f.objtool / 1000)}, kbuild's final steps ${s(f.final / 1000)}]; ktld / by hand ${(firstS / (f.total / 1000)).toFixed(2)}x`);
  }

  // --boot: the daemon boots each fresh kernel and runs a script in it; the table gets the
  // boot's time and the save → verdict time.
  const wantBoot = process.argv.includes("--boot");
  const bootScript = path.join(root, "boot-check.sh");
  fs.writeFileSync(bootScript, "#!/bin/sh\ngrep -q '^loop ' /proc/modules || modprobe loop\n", { mode: 0o755 });
  log(`daemon: start${wantBoot ? " (--boot-run)" : ""}`);
  const [, startS] = timed(() => k.ktld(["start", `-j${jobs}`, "--idle-timeout", "3600", ...(wantBoot ? ["--boot-run", bootScript] : [])]));
  // The startup scan: wait until it is done.
  const [, scanS] = timed(() => k.ktld(["build", "--wait", "--json"]));
  const pid = (JSON.parse(k.ktld(["status", "--json"])) as { pid: number }).pid;
  const rssAfterStart = rssOf(pid);
  const watcherRss = () => (JSON.parse(k.ktld(["status", "--json"])) as { memory: { watcher?: { anonMiB: number; fileMiB: number } } }).memory.watcher;
  const watcherAfterStart = watcherRss();
  const rows: string[][] = [];
  const profiles: [string, ProfileJson][] = [];
  const daemonRow = async (e: Edit) => {
    log(`daemon: ${e.name}`);
    const makeS = stockTime(e);
    let noltoS: number | undefined;
    if (nolto) {
      e.apply(nolto);
      noltoS = timed(() => nolto.make(["vmlinux"]))[1];
    }
    if (raw) e.apply(raw);
    const byHand = tools && e.objects.length ? await tools.rebuild(e.objects) : undefined;
    const before = (JSON.parse(k.ktld(["status", "--json"])) as { history: { id: number }[] }).history[0]?.id;
    const t0 = performance.now();
    e.apply(k);
    // A save that needs no job: timed to the daemon's answer (its log line), then asked as
    // a client would; otherwise build --wait answers with the build that covers the save.
    const answered = e.objects.length === 0 ? ((await follower.next(/no content change/, t0)).at - t0) / 1000 : undefined;
    const r = JSON.parse(await k.ktldAsync(["build", "--wait", "--json"])) as KtldJson & { profile?: ProfileJson; vmlinuxReadyMs?: number; modulesFinal?: { ms: number } };
    const doneS = (performance.now() - t0) / 1000;
    // Save → fresh vmlinux: the daemon's line when vmlinux was whole (kernel modules' modpost
    // and BTF may still follow it; `done` below is the whole build).
    const ready = r.vmlinuxReadyMs !== undefined ? ((await follower.next(new RegExp(`#${r.id} vmlinux fresh after`), t0)).at - t0) / 1000 : undefined;
    const kS = answered ?? ready ?? doneS;
    const unchanged = r.id === before;
    const modulesAfter = ready !== undefined && r.modulesFinal ? `; done ${s(doneS)} with modpost + .ko/BTF ${s(r.modulesFinal.ms / 1000)}` : "";
    const what = unchanged ? `no job: content unchanged (the daemon's answer; ${s((performance.now() - t0) / 1000)} with a ktld build --wait client started after the save)` : r.ok ? `${phases(r)}${modulesAfter}` : "FAILED";
    const handS = byHand ? byHand.total / 1000 : undefined;
    rows.push([
      e.name, s(makeS), ...(nolto ? [noltoS === undefined ? "-" : s(noltoS)] : []), handS === undefined ? "-" : `${s(handS)} (BE ${byHand!.backendJobs})`, s(kS),
      handS === undefined ? "-" : `${(kS / handS).toFixed(2)}x`, `${(makeS / kS).toFixed(1)}x`, what,
    ]);
    if (wantBoot && !unchanged && r.ok) {
      const said = await follower.next(new RegExp(`\\[BOOT\\] #${r.id}: (pass|fail|panic|oops|timeout|error) in ([\\d.]+) s`), t0, 300_000);
      const m = /: (\w+) in ([\d.]+) s/.exec(said.line)!;
      bootRows.push([e.name, s(kS), `${m[2]} s (${m[1]})`, s((said.at - t0) / 1000)]);
    }
    if (byHand) {
      handRows.push([e.name, ...[byHand.fe, byHand.thinLink, byHand.backend, byHand.vmlinuxO, byHand.objtool, byHand.final, byHand.total].map((ms) => s(ms / 1000))]);
    }
    if (!unchanged && r.ok && !r.link.skipped && r.link.steps) splitRows.push([e.name, ...linkSplit(r.link.steps, r.link.ms)]);
    if (r.profile && !unchanged) profiles.push([e.name, { ...r.profile, wallMs: r.profile.wallMs }]);
    else if (unchanged) profiles.push([e.name, { wallMs: kS * 1000, toolMs: 0, ownMs: kS * 1000, own: {}, tools: {} }]);
  };
  const handRows: string[][] = [];
  const splitRows: string[][] = [];
  const bootRows: string[][] = [];
  const touch: Edit = { name: `touch ${FORK}`, objects: [], apply: (side) => { const now = new Date(); fs.utimesSync(side.file(FORK), now, now); } };
  const follower = new LogFollower(k);
  try {
    for (const e of oneEdit ? [fnEdit("daemon"), undo] : [sameBytes, touch, fnEdit("daemon"), header, headerUndo, undo]) await daemonRow(e);
  } finally {
    follower.stop();
  }
  const rssEnd = rssOf(pid);
  const watcherEnd = watcherRss();
  k.ktld(["stop"]);
  out.push(table("from the save to a fresh vmlinux: stock make vmlinux, the same work by hand with the raw tools (scripts/rawtools.ts), the ktld daemon (its `vmlinux fresh` line; in a tree with modules kbuild's modpost and module BTF follow, `done` in the phases):",
    ["change", "stock make vmlinux", ...(nolto ? ["make vmlinux, LTO off"] : []), "tool commands by hand", "ktld daemon", "ktld / by hand", "speed-up vs make", "ktld phases (of the build that covered the save)"], rows));
  if (wantBoot) out.push(table("save → boot → verdict (ktld start --boot-run: a script that loads loop.ko in the fresh kernel; qemu with KVM):", ["change", "save → fresh vmlinux", "boot (verdict)", "save → verdict"], bootRows));
  out.push(table("the tool commands by hand, by step:", ["change", "FE", "thin-link", "BE", "vmlinux.o", "objtool", "kbuild's final steps", "total"], handRows));
  out.push(table("ktld's link, step by step (the BE's output to a fresh vmlinux; the kallsyms passes: each pass's NM, KSYMS and AS):", ["change", ...LINK_SPLIT_HEADER], splitRows));
  if (wantProfile) out.push(profileTable(profiles));
  const mb = (r: { anon: number; file: number }) => `${r.anon.toFixed(0)} MiB anonymous + ${r.file.toFixed(0)} MiB file-backed`;
  const wmb = (w?: { anonMiB: number; fileMiB: number }) => (w ? mb({ anon: w.anonMiB, file: w.fileMiB }) : "-");
  out.push(`daemon start: ${s(startS)} until it answers, ${s(scanS)} more for its startup scan; RSS ${mb(rssAfterStart)} after start, ${mb(rssEnd)} at the end; its watcher process ${wmb(watcherAfterStart)} after start, ${wmb(watcherEnd)} at the end`);
  process.stdout.write(`${out.join("\n")}\n`);
}

// Run as a script only: a test may import what it exports.
if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`bench: ${(e as Error).stack ?? String(e)}\n`);
    process.exit(1);
  });
}
