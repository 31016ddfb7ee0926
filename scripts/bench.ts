// Benchmark: the same edits timed as stock `make vmlinux` (in-process ThinLTO) and with
// ktld, side by side in one run, on two fresh copies of the fixture (one per side, so
// neither disturbs the other's state). Runs one side at a time.
//
//   npm run bench            (KTLD_BENCH_DIR moves the scratch copies; default: a temp dir)
//   npm run bench -- --quick (skip the one-shot table)
//   npm run bench -- --dist  (the seed's dist-mode fixture: the seed's make vs ktld)
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { copyFixture, fixtureEnv, FixtureVariant, MAKE_ARGS } from "./fixture";

const KTLD = path.resolve(__dirname, "../client/ktld.js");
const ANCHOR = "void free_task(struct task_struct *tsk)\n{\n";
const HEADER = "include/linux/statfs.h";

interface KtldJson {
  id?: number;
  ok: boolean;
  frontend: { compiled: number; ms: number };
  thinlink: { ms: number };
  backend: { modules: number; compiled: number; cacheHits: number; ms: number };
  link: { ms: number; skipped: boolean };
  ms: number;
}

function timed<T>(fn: () => T): [T, number] {
  const t0 = performance.now();
  const v = fn();
  return [v, (performance.now() - t0) / 1000];
}

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, env: fixtureEnv(), encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed:\n${r.stderr}${r.stdout}`);
  return r.stdout;
}

const s = (x: number) => `${x.toFixed(2)} s`;
const jobs = os.cpus().length;

class Side {
  constructor(readonly tree: string) {}
  file(rel: string): string {
    return path.join(this.tree, rel);
  }
  make(targets: string[]): void {
    run("make", [...MAKE_ARGS, `-j${jobs}`, "-s", ...targets], this.tree);
  }
  /** make with kbuild's lines, for counting its jobs. */
  makeVerbose(targets: string[]): string {
    return run("make", [...MAKE_ARGS, `-j${jobs}`, ...targets], this.tree);
  }
  ktld(args: string[]): string {
    return run(process.execPath, [KTLD, ...args, "--build-dir", this.tree], this.tree);
  }
  build(): KtldJson {
    return JSON.parse(this.ktld(["build", "--json", `-j${jobs}`])) as KtldJson;
  }
}

interface Edit {
  readonly name: string;
  readonly apply: (side: Side) => void;
}

function phases(k: KtldJson): string {
  return `FE ${k.frontend.compiled} ${s(k.frontend.ms / 1000)}, thin-link ${s(k.thinlink.ms / 1000)}, BE ${k.backend.compiled} run/${k.backend.cacheHits} cached ${s(k.backend.ms / 1000)}, link ${k.link.skipped || !k.link.ms ? "-" : s(k.link.ms / 1000)}`;
}

function table(title: string, header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => (r[c] ?? "").length)));
  const line = (r: string[]) => r.map((cell, c) => (cell ?? "").padEnd(widths[c])).join(" | ");
  return `\n${title}\n\n${line(header)}\n${widths.map((w) => "-".repeat(w)).join("-|-")}\n${rows.map(line).join("\n")}\n`;
}

function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** The seed's own make (CONFIG_LTO_CLANG_THIN_DIST) against ktld on the same tree kind. */
function mainDist(root: string, log: (m: string) => void): void {
  const variant: FixtureVariant = "dist";
  log(`copying the dist-mode fixture twice under ${root}`);
  const seedMake = new Side(copyFixture(path.join(root, "make"), variant));
  const k = new Side(copyFixture(path.join(root, "ktld"), variant));
  seedMake.make(["vmlinux"]);
  k.make(["vmlinux"]);
  const forkOriginal = fs.readFileSync(seedMake.file("kernel/fork.c"), "utf8");
  const beLines = (out: string) => out.split("\n").filter((l) => /^\s+CC\s+\S+\.thinlto-native\.o$/.test(l)).length;
  const [first, firstS] = timed(() => k.build());
  const out: string[] = [];
  out.push(`ktld benchmark: tinyconfig + CONFIG_LTO_CLANG_THIN_DIST (the seed backported to 6.12), ${first.backend.modules} modules, clang-19, -j${jobs}, ${os.cpus()[0].model}`);
  out.push(`first ktld build on make's dist-mode tree: ${s(firstS)} [${phases(first)}] (kbuild's natives taken as they are)`);
  k.ktld(["start", `-j${jobs}`, "--idle-timeout", "3600"]);
  k.ktld(["build", "--wait", "--json"]);
  const rows: string[][] = [];
  const edits: [string, string][] = [
    ["one-function edit in kernel/fork.c", forkOriginal.replace(ANCHOR, `${ANCHOR}\tpr_info("ktld bench dist\\n");\n`)],
    ["undo of that edit", forkOriginal],
    ["save of kernel/fork.c with the same bytes", forkOriginal],
  ];
  for (const [name, text] of edits) {
    log(`dist: ${name}`);
    fs.writeFileSync(seedMake.file("kernel/fork.c"), text);
    const [makeOut, makeS] = timed(() => seedMake.makeVerbose(["vmlinux"]));
    const before = (JSON.parse(k.ktld(["status", "--json"])) as { history: { id: number }[] }).history[0]?.id;
    const t0 = performance.now();
    fs.writeFileSync(k.file("kernel/fork.c"), text);
    const r = JSON.parse(k.ktld(["build", "--wait", "--json"])) as KtldJson;
    const kS = (performance.now() - t0) / 1000;
    const kJobs = r.id === before ? 0 : r.backend.compiled;
    rows.push([name, s(makeS), String(beLines(makeOut)), s(kS), String(kJobs), `${(makeS / kS).toFixed(1)}x`, r.id === before ? "no job: content unchanged" : phases(r)]);
  }
  k.ktld(["stop"]);
  out.push(table("the seed's make vmlinux (dist mode) vs the ktld daemon, from the save to a fresh vmlinux:",
    ["change", "seed's make", "its BE jobs", "ktld daemon", "ktld BE jobs", "speed-up", "ktld phases"], rows));
  process.stdout.write(`${out.join("\n")}\n`);
}

function main(): void {
  const quick = process.argv.includes("--quick");
  const root = fs.mkdtempSync(path.join(process.env.KTLD_BENCH_DIR ?? os.tmpdir(), "ktld-bench-"));
  process.on("exit", () => fs.rmSync(root, { recursive: true, force: true }));
  const log = (m: string) => process.stderr.write(`bench: ${m}\n`);
  if (process.argv.includes("--dist")) return mainDist(root, log);
  log(`copying the fixture twice under ${root}`);
  const stock = new Side(copyFixture(path.join(root, "make")));
  const k = new Side(copyFixture(path.join(root, "ktld")));
  // Settle the copies: objtool is relinked once after a copy (absolute paths in its build).
  stock.make(["vmlinux"]);
  k.make(["vmlinux"]);
  const forkOriginal = fs.readFileSync(stock.file("kernel/fork.c"), "utf8");
  const headerOriginal = fs.readFileSync(stock.file(HEADER), "utf8");
  const fnEdit = (tag: string): Edit => ({
    name: `one-function edit in kernel/fork.c`,
    apply: (side) => fs.writeFileSync(side.file("kernel/fork.c"), forkOriginal.replace(ANCHOR, `${ANCHOR}\tpr_info("ktld bench ${tag}\\n");\n`)),
  });
  const undo: Edit = { name: "undo of that edit", apply: (side) => fs.writeFileSync(side.file("kernel/fork.c"), forkOriginal) };
  const sameBytes: Edit = { name: "save of kernel/fork.c with the same bytes", apply: (side) => fs.writeFileSync(side.file("kernel/fork.c"), fs.readFileSync(side.file("kernel/fork.c"))) };
  const header: Edit = { name: `edit of ${HEADER} (3 users)`, apply: (side) => fs.writeFileSync(side.file(HEADER), `${headerOriginal}extern int ktld_bench_decl;\n`) };
  const headerUndo: Edit = { name: `undo of the header edit`, apply: (side) => fs.writeFileSync(side.file(HEADER), headerOriginal) };

  const stockTime = (e: Edit) => {
    e.apply(stock);
    return timed(() => stock.make(["vmlinux"]))[1];
  };

  log("first ktld build (BE of every module)");
  const [first, firstS] = timed(() => k.build());
  const out: string[] = [];
  out.push(`ktld benchmark: tinyconfig + CONFIG_LTO_CLANG_THIN, ${first.backend.modules} modules, clang-19, -j${jobs}, ${os.cpus()[0].model}`);
  out.push(`first LTO link by ktld (BE of every module at -j${jobs}, thin-link, link): ${s(firstS)}  [${phases(first)}]`);

  if (!quick) {
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

  log("daemon: start");
  const [, startS] = timed(() => k.ktld(["start", `-j${jobs}`, "--idle-timeout", "3600"]));
  // The startup scan: wait until it is done.
  const [, scanS] = timed(() => k.ktld(["build", "--wait", "--json"]));
  const pid = (JSON.parse(k.ktld(["status", "--json"])) as { pid: number }).pid;
  const rssAfterStart = rssOf(pid);
  const rows: string[][] = [];
  const daemonRow = (e: Edit) => {
    log(`daemon: ${e.name}`);
    const makeS = stockTime(e);
    const before = (JSON.parse(k.ktld(["status", "--json"])) as { history: { id: number }[] }).history[0]?.id;
    const t0 = performance.now();
    e.apply(k);
    // build --wait answers with the build that covers every save before it.
    const r = JSON.parse(k.ktld(["build", "--wait", "--json"])) as KtldJson;
    const kS = (performance.now() - t0) / 1000;
    const what = r.id === before ? "no job: content unchanged" : r.ok ? phases(r) : "FAILED";
    rows.push([e.name, s(makeS), s(kS), `${(makeS / kS).toFixed(1)}x`, what]);
  };
  for (const e of [sameBytes, fnEdit("daemon"), header, headerUndo, undo]) daemonRow(e);
  const rssEnd = rssOf(pid);
  k.ktld(["stop"]);
  out.push(table("ktld daemon, from the save to a fresh vmlinux (ktld build --wait returns):", ["change", "stock make vmlinux", "ktld daemon", "speed-up", "ktld phases (of the build that covered the save)"], rows));
  out.push(`daemon start: ${s(startS)} until it answers, ${s(scanS)} more for its startup scan; RSS ${rssAfterStart.toFixed(0)} MiB after start, ${rssEnd.toFixed(0)} MiB at the end`);
  process.stdout.write(`${out.join("\n")}\n`);
}

main();
