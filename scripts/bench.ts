// Benchmark: the same edits timed as stock `make vmlinux` (in-process ThinLTO) and as
// `make kernel/fork.o` + `ktld build`, side by side in one run on a fresh fixture copy.
//
//   npm run bench            (KTLD_BENCH_DIR moves the scratch copy; default: a temp dir)
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { copyFixture, fixtureEnv, MAKE_ARGS } from "./fixture";

const KTLD = path.resolve(__dirname, "../client/ktld.js");
const ANCHOR = "void free_task(struct task_struct *tsk)\n{\n";
const EDIT = '\tpr_info("ktld bench edit\\n");\n';

interface KtldJson {
  ok: boolean;
  thinlink: { ms: number };
  backend: { modules: number; compiled: number; cacheHits: number; ms: number };
  link: { ms: number };
  ms: number;
}

function timed<T>(fn: () => T): [T, number] {
  const t0 = performance.now();
  const v = fn();
  return [v, (performance.now() - t0) / 1000];
}

function run(cmd: string, args: string[], cwd: string): string {
  const r = spawnSync(cmd, args, { cwd, env: fixtureEnv(), encoding: "utf8", maxBuffer: 64 << 20 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(" ")} failed:\n${r.stderr}`);
  return r.stdout;
}

const s = (x: number) => `${x.toFixed(1)} s`;

function main(): void {
  const jobs = os.cpus().length;
  const root = fs.mkdtempSync(path.join(process.env.KTLD_BENCH_DIR ?? os.tmpdir(), "ktld-bench-"));
  const tree = path.join(root, "linux");
  process.stderr.write(`bench: copying the fixture to ${tree}\n`);
  copyFixture(tree);
  const forkC = path.join(tree, "kernel/fork.c");
  const original = fs.readFileSync(forkC, "utf8");
  const edited = original.replace(ANCHOR, ANCHOR + EDIT);
  const make = (targets: string[]) => run("make", [...MAKE_ARGS, `-j${jobs}`, "-s", ...targets], tree);
  const ktld = (): KtldJson => JSON.parse(run(process.execPath, [KTLD, "build", "--build-dir", tree, "--json", `-j${jobs}`], tree)) as KtldJson;
  // Settle the copy: objtool and friends are rebuilt once after a copy (absolute paths).
  make(["vmlinux"]);

  const rows: string[][] = [];
  process.stderr.write("bench: first ktld build (BE of every module)\n");
  const [first, firstS] = timed(ktld);
  rows.push(["first LTO link by ktld", "-", s(firstS), "-", `BE ${first.backend.compiled}/${first.backend.modules}, ${s(first.backend.ms / 1000)}`]);

  const scenario = (name: string, change: () => void, undo: () => void) => {
    process.stderr.write(`bench: ${name}: stock make vmlinux\n`);
    change();
    const [, makeS] = timed(() => make(["vmlinux"]));
    undo();
    make(["vmlinux"]);
    ktld();
    process.stderr.write(`bench: ${name}: make kernel/fork.o + ktld build\n`);
    change();
    const [, feS] = timed(() => make(["kernel/fork.o"]));
    const [k, kS] = timed(ktld);
    const total = feS + kS;
    rows.push([name, s(makeS), `${s(total)} (${s(feS)} + ${s(kS)})`, `${(makeS / total).toFixed(1)}x`,
      `thin-link ${s(k.thinlink.ms / 1000)}, BE ${k.backend.compiled} run/${k.backend.cacheHits} cached ${s(k.backend.ms / 1000)}, link ${s(k.link.ms / 1000)}`]);
  };
  scenario("one-function edit in kernel/fork.c", () => fs.writeFileSync(forkC, edited), () => fs.writeFileSync(forkC, original));
  scenario("touch kernel/fork.c", () => fs.utimesSync(forkC, new Date(), new Date()), () => undefined);
  // Undo: the edited state was built by ktld above, so its natives are in the cache.
  fs.writeFileSync(forkC, edited);
  make(["kernel/fork.o"]);
  ktld();
  scenario("undo of that edit", () => fs.writeFileSync(forkC, original), () => fs.writeFileSync(forkC, edited));

  const [noop, noopS] = timed(ktld);
  rows.push(["ktld build, nothing changed", "-", s(noopS), "-", `BE ${noop.backend.compiled}, link ${noop.link.ms} ms`]);

  const header = ["scenario", "stock make vmlinux", "make kernel/fork.o + ktld build", "speed-up", "ktld phases"];
  const all = [header, ...rows];
  const widths = header.map((_, c) => Math.max(...all.map((r) => r[c].length)));
  const line = (r: string[]) => r.map((cell, c) => cell.padEnd(widths[c])).join(" | ");
  process.stdout.write(`\nktld benchmark: tinyconfig + CONFIG_LTO_CLANG_THIN, clang-19, -j${jobs}, ${os.cpus()[0].model}\n\n`);
  process.stdout.write(`${line(header)}\n${widths.map((w) => "-".repeat(w)).join("-|-")}\n${rows.map(line).join("\n")}\n`);
  fs.rmSync(root, { recursive: true, force: true });
}

main();
