// Where kbuild's link after vmlinux.o spends its time: `make vmlinux` on a copy of a fixture
// whose vmlinux.o is made newer than vmlinux, so that make runs only scripts/Makefile.vmlinux
// (link-vmlinux.sh: the kallsyms and BTF links, pahole, resolve_btfids, sorttable), traced
// (`KBUILD_VERBOSE=1` sets -x in it) and each traced command timed from the moment its trace
// line arrives (the shell writes it just before it runs the command). These are the steps ktld runs
// verbatim after its own vmlinux.o link; the table says which of them a relink waits for.
//
//   npm run linksplit                       (the developer fixture, 3 runs)
//   npm run linksplit -- --fixture thin --reps 5
import { spawn } from "node:child_process";
import * as readline from "node:readline";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { copyFixture, fixtureEnv, FixtureVariant, MAKE_ARGS, outOfTree } from "./fixture";

/** One traced command of link-vmlinux.sh: when it started and what it was. */
export interface Traced {
  readonly at: number;
  readonly command: string;
}

/** The shell's xtrace lines (`+ <command>`), each with the time it arrived. */
export function parseTrace(lines: readonly { at: number; line: string }[]): Traced[] {
  const out: Traced[] = [];
  for (const { at, line } of lines) {
    const m = /^\++ (.*)$/.exec(line);
    if (m) out.push({ at, command: m[1] });
  }
  return out;
}

/** Runs `cmd`, each line of its stderr stamped with when it arrived (seconds). */
function runStamped(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; lines: { at: number; line: string }[] }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ["ignore", "ignore", "pipe"] });
    const lines: { at: number; line: string }[] = [];
    readline.createInterface({ input: child.stderr }).on("line", (line) => lines.push({ at: performance.now() / 1000, line }));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", reject);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, lines });
    });
  });
}

/** The step a traced command belongs to, or undefined for the script's own bookkeeping. */
export function stepOf(traced: string): string | undefined {
  // `LLVM_OBJCOPY=llvm-objcopy-19 pahole -J ...`: the assignments before a command are not it.
  const command = traced.replace(/^(\w+=\S*\s+)+/, "");
  const ld = /^\S*ld(\.lld)?(-\d+)?(?: .*)? -o (\S+)/.exec(command);
  if (ld) return `LD ${ld[3]}${/--strip-debug/.test(command) ? " (no debug info)" : ""}`;
  if (/^\S*pahole /.test(command)) return "BTF: pahole -J";
  if (/^\S*objcopy(-\d+)? .*--only-section=\.BTF/.test(command)) return "BTF: objcopy";
  if (/^\S*scripts\/kallsyms /.test(command)) return "KSYMS: scripts/kallsyms";
  if (/^\S*clang(-\d+)? .*kallsyms\.o/.test(command)) return "KSYMS: as";
  if (/^\S*nm(-\d+)? -n /.test(command)) return "NM (System.map, kallsyms input)";
  if (/resolve_btfids /.test(command)) return "BTFIDS";
  if (/^\S*nm(-\d+)? -S |sorttable /.test(command)) return "SORTTAB";
  if (/^\S*make .*version-timestamp/.test(command)) return "version-timestamp.o";
  return undefined;
}

/** Each step's time: a command runs until the next traced one starts (the script is serial). */
export function splitTimes(trace: readonly Traced[], end: number): Map<string, number> {
  const out = new Map<string, number>();
  for (let i = 0; i < trace.length; i++) {
    const step = stepOf(trace[i].command) ?? "the script's own commands";
    const next = i + 1 < trace.length ? trace[i + 1].at : end;
    out.set(step, (out.get(step) ?? 0) + (next - trace[i].at));
  }
  return out;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

async function main(): Promise<void> {
  const arg = (name: string) => {
    const i = process.argv.indexOf(name);
    return i >= 0 ? process.argv[i + 1] : undefined;
  };
  const variant = (arg("--fixture") ?? "dev") as FixtureVariant;
  const reps = Number(arg("--reps") ?? 3);
  const root = fs.mkdtempSync(path.join(process.env.KTLD_BENCH_DIR ?? os.tmpdir(), "ktld-linksplit-"));
  try {
    const buildDir = copyFixture(path.join(root, "linux"), variant);
    const src = outOfTree(variant) ? path.dirname(buildDir) : buildDir;
    const o = outOfTree(variant) ? [`O=${path.relative(src, buildDir)}`] : [];
    const runs: Map<string, number>[] = [];
    const walls: number[] = [];
    for (let r = 0; r < reps; r++) {
      const now = new Date();
      fs.utimesSync(path.join(buildDir, "vmlinux.o"), now, now);
      const t0 = performance.now() / 1000;
      const mk = await runStamped("make", [...MAKE_ARGS, ...o, "KBUILD_VERBOSE=1", "vmlinux"], src, fixtureEnv(variant), 30 * 60_000);
      const end = performance.now() / 1000;
      if (mk.code !== 0) throw new Error(`make vmlinux failed:\n${mk.lines.slice(-40).map((l) => l.line).join("\n")}`);
      const trace = parseTrace(mk.lines);
      if (!trace.some((t) => stepOf(t.command) === "LD vmlinux")) throw new Error(`make did not run link-vmlinux.sh's final link:\n${mk.lines.slice(-40).map((l) => l.line).join("\n")}`);
      walls.push(end - t0);
      const split = splitTimes(trace, end);
      split.set("make before the script (its walk of the tree, modpost)", trace[0].at - t0);
      runs.push(split);
      process.stderr.write(`run ${r + 1}/${reps}: make vmlinux ${(end - t0).toFixed(2)} s\n`);
    }
    const steps = [...new Set(runs.flatMap((m) => [...m.keys()]))];
    const rows = steps.map((s) => ({ s, t: runs.map((m) => m.get(s) ?? 0) })).sort((a, b) => median(b.t) - median(a.t));
    const f = (x: number) => x.toFixed(2).padStart(7);
    const out = [`link after vmlinux.o, ${variant} fixture, ${reps} runs of make vmlinux (median, min-max, seconds)`, ""];
    out.push(`| step | median | min-max |`, `| --- | ---: | ---: |`);
    for (const { s, t } of rows) out.push(`| ${s} | ${f(median(t))} | ${Math.min(...t).toFixed(2)}-${Math.max(...t).toFixed(2)} |`);
    out.push(`| make vmlinux, whole | ${f(median(walls))} | ${Math.min(...walls).toFixed(2)}-${Math.max(...walls).toFixed(2)} |`);
    process.stdout.write(`${out.join("\n")}\n`);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

if (require.main === module) {
  main().catch((e: unknown) => {
    process.stderr.write(`linksplit: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
