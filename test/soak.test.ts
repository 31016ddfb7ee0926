// Seeded random edit sequences through the live daemon, with crashes and corruption; at
// every quiet point the daemon's result must equal a clean build of the same source state
// (kbuild's FE, then a ktld build from an empty cache), and the jobs it ran must be the
// ones the step's changes call for.
//
// Sized for CI by default. The soak (`npm run soak`, or KTLD_SOAK=1) runs longer;
// KTLD_SOAK_SEQUENCES, KTLD_SOAK_STEPS and KTLD_SOAK_SEED override. A failure prints the
// seed and the step; the same seed replays the same sequence.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { readCmdFile } from "../src/kbuild/cmdfile";
import { importTree } from "../src/kbuild/tree";
import { nonMinimalJobs, restorableKeys, StepFacts } from "./minimality";
import { referenceNatives, referenceVmlinuxO } from "./reference";
import { diedAt, execBounded, fixtureCopy, hashesOf, ktld, ktldBuild, prng, spawnBounded, THIN_KILL_POINTS } from "./helpers";

const SOAK = process.env.KTLD_SOAK === "1";
const num = (v: string | undefined, d: number) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : d);
const SEQUENCES = num(process.env.KTLD_SOAK_SEQUENCES, SOAK ? 3 : 1);
// One round of every kind of step in CI; three rounds per sequence in the soak.
const STEPS = num(process.env.KTLD_SOAK_STEPS, SOAK ? 45 : 15);
// CI replays one known seed (a landing must not hang on luck); the soak draws a new one.
const SEED = num(process.env.KTLD_SOAK_SEED, SOAK ? Date.now() % 1_000_000 : 4242);
/** KTLD_SOAK_STOP=S:N: end the run after step N of sequence S (1-based), for a replay. */
const STOP = /^(\d+):(\d+)$/.exec(process.env.KTLD_SOAK_STOP ?? "");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// The soak keeps a git repository in its tree (for stash steps). kbuild's setlocalversion
// appends "+" to the release of a tree in git when LOCALVERSION is unset, so the first make
// run of a hand-over step would change the kernel's version string (and FE init/version.o,
// kernel/sys.o) where the reference tree, not in git, keeps it. Set, it appends nothing.
process.env.LOCALVERSION ??= "";

interface Job { object: string; action: string; reason: string }
interface HistoryEntry {
  id: number;
  startedAt: number;
  ok: boolean;
  report: {
    ok: boolean;
    error?: string;
    diagnostics?: string;
    backend: { jobs: Job[] };
    frontendJobs: { object: string; reason: string; changed: boolean }[];
    kbuild: string[];
  };
}
interface Status { pid: number; state: string; current: { phase: string } | null; history: HistoryEntry[] }

/** The reference recipe's BE compiles, by their inputs' content (test/reference.ts). */
const recipeMemo = new Map<string, string>();
const figures = {
  sequences: 0, steps: 0, edits: 0, crashes: 0, crashPoints: [] as string[], blobDamage: [] as string[], midBuildEdits: 0, corruptions: 0, quietPoints: 0, compared: 0,
  comparedWithRecipe: 0, comparedClean: 0, comparedWithKbuildLink: 0, mismatches: 0, nonMinimal: 0, redoneAfterDamage: 0,
  /** Crash and mid-build steps whose moment never came (reported, not counted as done). */
  notDone: [] as string[],
};

/** What a step did to the tree, for the minimality check. */
interface StepLog {
  kind: string;
  files: Set<string>;
  /** Natives right after a crash (their hashes, by path): a native the crash removed or
   * changed may be redone. */
  nativesAfterCrash?: Map<string, string>;
  /** The store was damaged: with its hashes gone, ktld judges files by mtime, as make does,
   * and may FE what it had already done (counted, not failed). */
  storeLost: boolean;
  /** The step ends in a failed build (a syntax error): no comparison. */
  expectFailure: boolean;
  /** Cache keys restorable when the daemon met the step (taken after a corruption). */
  restorable?: Set<string>;
}

/** Source files of vmlinux's bitcode modules, and which objects use which header. */
function sourcesOf(tree: string): { sources: string[]; headerUsers: Map<string, string[]>; imported: Set<string> } {
  const t = importTree(tree);
  const sources: string[] = [];
  const headerUsers = new Map<string, string[]>();
  for (const [obj, m] of t.units) {
    const src = m.cmd.source;
    if (src && /^(kernel|mm|lib|init|fs)\/[\w/-]+\.c$/.test(src) && !src.includes("/generated/")) sources.push(src);
    for (const d of m.cmd.deps) {
      if (/^include\/linux\/[\w-]+\.h$/.test(d)) headerUsers.set(d, [...(headerUsers.get(d) ?? []), obj]);
    }
  }
  // Modules that some other module imports from (ktld writes <obj>.imports beside each index).
  const imported = new Set<string>();
  for (const [f] of hashesOf(tree, ".o.imports")) {
    for (const line of fs.readFileSync(path.join(tree, f), "utf8").split("\n").filter(Boolean)) {
      const src = t.units.get(path.relative(tree, path.resolve(tree, line)))?.cmd.source;
      if (src && sources.includes(src)) imported.add(src);
    }
  }
  return { sources: sources.sort(), headerUsers, imported };
}

/** Function bodies of a C file: offsets just after `)\n{\n` of a definition at column 0. */
function functionStarts(text: string): number[] {
  const out: number[] = [];
  const re = /^[a-zA-Z_][^\n;{}#]*\)\n\{\n/gm;
  for (let m = re.exec(text); m; m = re.exec(text)) out.push(m.index + m[0].length);
  return out;
}

class Sequence {
  readonly rnd: () => number;
  readonly touched = new Map<string, (string | null)[]>(); // file → its versions, first = original (null: absent)
  /** Sources the sequence added (with their line in the directory's Makefile), still there. */
  readonly added: string[] = [];
  step = 0;
  /** A step gave files new times without new bytes (git stash): make would redo work. */
  timesMoved = false;
  private uniq = 0;

  constructor(readonly tree: string, readonly seed: number, readonly catalog: ReturnType<typeof sourcesOf>) {
    this.rnd = prng(seed);
  }

  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.rnd() * xs.length)];
  }

  read(rel: string): string {
    return fs.readFileSync(path.join(this.tree, rel), "utf8");
  }

  /** A file's text, or null if it does not exist. */
  readOrNull(rel: string): string | null {
    try {
      return fs.readFileSync(path.join(this.tree, rel), "utf8");
    } catch {
      return null;
    }
  }

  /** Writes a file (null: deletes it), keeping its versions. */
  write(rel: string, text: string | null): void {
    const versions = this.touched.get(rel) ?? [this.readOrNull(rel)];
    versions.push(text);
    this.touched.set(rel, versions);
    if (text === null) fs.rmSync(path.join(this.tree, rel), { force: true });
    else fs.writeFileSync(path.join(this.tree, rel), text);
  }

  /** A statement added at the start of a random function: new code, same everything else. */
  bodyEdit(rel: string): string {
    const text = this.read(rel);
    const starts = functionStarts(text);
    const at = starts.length ? this.pick(starts) : text.length;
    const stmt = starts.length ? `\tasm volatile("# ktld soak ${this.seed}.${++this.uniq}" ::: "memory");\n` : `\n`;
    return text.slice(0, at) + stmt + text.slice(at);
  }

  /** A statement added at the start of kernel/fork.c's free_task. */
  freeTaskEdit(): string {
    const text = this.read(FREE_TASK.file);
    assert.ok(text.includes(FREE_TASK.anchor), `free_task is not in ${FREE_TASK.file}`);
    return text.replace(FREE_TASK.anchor, `${FREE_TASK.anchor}\tasm volatile("# ktld soak crash ${this.seed}.${++this.uniq}" ::: "memory");\n`);
  }

  newStatic(rel: string): string {
    const n = ++this.uniq;
    return `${this.read(rel)}\nstatic int __used ktld_soak_fn_${this.seed}_${n}(int x)\n{\n\treturn x * ${n} + 1;\n}\n`;
  }

  comment(rel: string): string {
    return `${this.read(rel)}/* ktld soak ${this.seed}.${++this.uniq} */\n`;
  }
}

function status(tree: string): Status {
  const r = ktld(["status", "--build-dir", tree, "--json"]);
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout) as Status;
}

function buildWait(tree: string): { id: number; ok: boolean } {
  const r = spawnBounded(process.execPath, [path.resolve(__dirname, "../client/ktld.js"), "build", "--wait", "--build-dir", tree, "--json"],
    { encoding: "utf8", env: fixtureEnv(), timeout: 900_000 });
  assert.ok(r.stdout, `ktld build --wait: ${r.stderr}`);
  return JSON.parse(r.stdout) as { id: number; ok: boolean };
}

function startDaemon(tree: string, env: NodeJS.ProcessEnv = {}): void {
  const r = ktld(["start", "--build-dir", tree, "--idle-timeout", "3600"], { ...fixtureEnv(), ...env });
  assert.equal(r.status, 0, `ktld start: ${r.stderr}`);
}


/** What the comparison looks at: every native, every object of vmlinux (the bitcode
 * modules included), vmlinux.o, vmlinux. */
function outputsOf(tree: string): Map<string, string> {
  const out = hashesOf(tree, ".thinlto-native.o");
  for (const o of importTree(tree).objects) out.set(o.path, hashFile(path.join(tree, o.path)) ?? "<missing>");
  for (const f of ["vmlinux.o", "vmlinux"]) out.set(f, hashFile(path.join(tree, f)) ?? "<missing>");
  return out;
}

/** Clean builds of source states in a second tree: kbuild's FE, then ktld from a fresh
 * state dir, with every native, index and link output of the tree removed first (nothing
 * of an earlier run can be reused). Memoized by the source state, so an undo back to a
 * known state costs nothing. */
class Reference {
  private readonly memo = new Map<string, Map<string, string>>();
  private readonly applied = new Map<string, string | null>();
  private readonly originals = new Map<string, string | null>();
  constructor(readonly tree: string) {}

  /** `state`: the files that differ from the fixture (others are as the fixture has them). */
  outputsFor(state: ReadonlyMap<string, string | null>): Map<string, string> {
    const key = JSON.stringify([...state].sort());
    const hit = this.memo.get(key);
    if (hit) return hit;
    this.apply(state);
    for (const suffix of [".thinlto-native.o", ".o.thinlto.bc", ".o.imports"]) {
      for (const [f] of hashesOf(this.tree, suffix)) fs.rmSync(path.join(this.tree, f));
    }
    for (const f of ["vmlinux.o", "vmlinux"]) fs.rmSync(path.join(this.tree, f), { force: true });
    const fresh = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-soak-ref-state-"));
    try {
      ktldBuild(this.tree, ["--state-dir", fresh]);
    } finally {
      fs.rmSync(fresh, { recursive: true, force: true });
    }
    const out = outputsOf(this.tree);
    this.memo.set(key, out);
    return out;
  }

  /** The tree's sources set to `state`, and its objects made by kbuild's FE. */
  apply(state: ReadonlyMap<string, string | null>): void {
    const want = new Map(state);
    for (const [rel, text] of this.originals) if (!want.has(rel)) want.set(rel, text);
    const readOrNull = (rel: string) => {
      try {
        return fs.readFileSync(path.join(this.tree, rel), "utf8");
      } catch {
        return null;
      }
    };
    for (const [rel, text] of want) {
      if (!this.originals.has(rel)) this.originals.set(rel, readOrNull(rel));
      if ((this.applied.has(rel) ? this.applied.get(rel) : this.originals.get(rel)) === text) continue;
      if (text === null) fs.rmSync(path.join(this.tree, rel), { force: true });
      else fs.writeFileSync(path.join(this.tree, rel), text);
      this.applied.set(rel, text);
    }
    const mk = spawnBounded("make", [...MAKE_ARGS, "-s", "-j2", "--eval=ref-%: vmlinux.a ;", "ref-prelink"], { cwd: this.tree, env: fixtureEnv(), encoding: "utf8" });
    assert.equal(mk.status, 0, `reference make: ${mk.stderr.slice(-3000)}`);
  }
}

/** What a mismatch needs explained: the step's files, and each build of the step with its
 * FE jobs and the BE jobs of the objects that differ. */
function mismatchStory(tree: string, files: Iterable<string>, builds: readonly HistoryEntry[], diff: readonly string[]): string {
  const natives = new Set(diff.map((f) => f.replace(/\.thinlto-native\.o$/, ".o")));
  const lines = [`step files: ${[...files].join(", ")}`];
  for (const b of builds) {
    lines.push(`build #${b.id} ${b.ok ? "ok" : "FAILED"}: kbuild [${b.report.kbuild.join("; ")}]`);
    for (const j of b.report.frontendJobs) lines.push(`  FE ${j.object}: ${j.reason}${j.changed ? "" : " (bitcode unchanged)"}`);
    for (const j of b.report.backend.jobs) if (natives.has(j.object)) lines.push(`  BE ${j.object}: ${j.action}: ${j.reason}`);
  }
  lines.push(`daemon log: ${path.join(tree, ".ktld/daemon.log")}${process.env.KTLD_SOAK_KEEP ? " (kept)" : ""}`);
  return lines.join("\n");
}

/** The builds that started since `t` (by time: a store started afresh numbers from 1). */
function entriesSince(tree: string, t: number): HistoryEntry[] {
  return status(tree).history.filter((h) => h.startedAt >= t).sort((a, b) => a.startedAt - b.startedAt || a.id - b.id);
}

/** The minimality facts of a step, read from the tree. */
function stepFacts(tree: string, log: StepLog, before: ReadonlyMap<string, string>, now: ReadonlyMap<string, string>, restorable: ReadonlySet<string>): StepFacts {
  return {
    files: log.files, before, now, restorable, storeLost: log.storeLost,
    damaged: new Set([...before].filter(([f, h]) => f.endsWith(".thinlto-native.o") && log.nativesAfterCrash && log.nativesAfterCrash.get(f) !== h)
      .map(([f]) => f.replace(/\.thinlto-native\.o$/, ".o"))),
    inputsOf: (o) => {
      const cmd = readCmdFile(tree, o);
      return [cmd.source, ...cmd.deps].filter((x): x is string => x !== undefined);
    },
    importsOf: (o) => {
      try {
        return fs.readFileSync(path.join(tree, `${o}.imports`), "utf8").split("\n").filter(Boolean).map((i) => path.normalize(i));
      } catch {
        return [];
      }
    },
  };
}

/** Hashes the minimality check compares: bitcode, index and imports files. */
function inputsOf(tree: string): Map<string, string> {
  const m = hashesOf(tree, ".o");
  for (const [k, v] of hashesOf(tree, ".o.thinlto.bc")) m.set(k, v);
  return m;
}

async function waitForPhase(tree: string, phases: readonly string[], ms: number): Promise<string | undefined> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    const p = status(tree).current?.phase;
    if (p && phases.includes(p)) return p;
    await sleep(40);
  }
  return undefined;
}

const BLOB_DAMAGE = ["flip", "truncate", "delete", "replace"] as const;

function flipBytes(file: string, rnd: () => number, n: number): void {
  const fd = fs.openSync(file, "r+");
  try {
    const size = fs.fstatSync(fd).size;
    for (let i = 0; i < n && size > 0; i++) {
      const at = Math.floor(rnd() * size);
      const b = Buffer.alloc(1);
      fs.readSync(fd, b, 0, 1, at);
      b[0] ^= 1 + Math.floor(rnd() * 255);
      fs.writeSync(fd, b, 0, 1, at);
    }
  } finally {
    fs.closeSync(fd);
  }
}

function blobsOf(stateDir: string): string[] {
  const out: string[] = [];
  const walk = (d: string) => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else out.push(p);
    }
  };
  if (fs.existsSync(path.join(stateDir, "blobs"))) walk(path.join(stateDir, "blobs"));
  return out;
}

/** Where a crash step edits: a function vmlinux always links. */
const FREE_TASK = { file: "kernel/fork.c", anchor: "void free_task(struct task_struct *tsk)\n{\n" } as const;

const KINDS = ["body", "import", "static", "header", "comment", "undo", "syntax", "burst", "stash", "during", "crash", "corrupt", "kbuild", "newsrc", "rmsrc"] as const;
type Kind = (typeof KINDS)[number];


/** KTLD_SOAK_KINDS=body,corrupt: a long run of some kinds only (each still once per round). */
const ONLY = (process.env.KTLD_SOAK_KINDS ?? "").split(",").filter(Boolean);
const unknownKinds = ONLY.filter((k) => !(KINDS as readonly string[]).includes(k));
if (unknownKinds.length) throw new Error(`KTLD_SOAK_KINDS: no such kind ${unknownKinds.join(", ")} (kinds: ${KINDS.join(", ")})`);
// A remove step removes a source an add step added (without one it would add instead).
if (ONLY.includes("rmsrc") && !ONLY.includes("newsrc")) throw new Error("KTLD_SOAK_KINDS: rmsrc needs newsrc (it removes a source newsrc added)");
const ROUND: readonly Kind[] = ONLY.length ? KINDS.filter((k) => ONLY.includes(k)) : KINDS;

/** The kinds of a sequence's steps: every kind once per round, in a seeded order. */
function kindsFor(rnd: () => number, steps: number): Kind[] {
  const out: Kind[] = [];
  while (out.length < steps) {
    const round = [...ROUND];
    for (let i = round.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [round[i], round[j]] = [round[j], round[i]];
    }
    out.push(...round);
  }
  // A source is removed only after one was added (else the step would add one instead).
  const add = out.indexOf("newsrc");
  const rm = out.indexOf("rmsrc");
  if (rm >= 0 && add > rm) [out[add], out[rm]] = [out[rm], out[add]];
  return out.slice(0, steps);
}

/** One step: edits, maybe a crash or a corruption, then a quiet point. */
async function runStep(seq: Sequence, kind: Kind, git: (args: string[]) => void, stashed: { on: boolean }): Promise<StepLog> {
  const { tree, catalog } = seq;
  const log: StepLog = { kind, files: new Set(), storeLost: false, expectFailure: false };
  const edit = (rel: string, text: string | null) => {
    seq.write(rel, text);
    log.files.add(rel);
    figures.edits++;
  };
  const src = () => seq.pick(catalog.sources);
  /** Edits a random source and waits for one of `phases`; up to three tries (a phase shorter
   * than a status round trip can be missed). The phase seen, or undefined. */
  const editUntilPhase = async (phases: readonly string[], ms: number): Promise<string | undefined> => {
    for (let attempt = 0; attempt < 3; attempt++) {
      const f = src();
      edit(f, seq.bodyEdit(f));
      const seen = await waitForPhase(tree, phases, ms);
      if (seen) return seen;
      assert.equal(buildWait(tree).ok, true, `${kind}: a build failed while waiting for ${phases.join("/")}`);
    }
    return undefined;
  };
  switch (kind) {
    case "body": { const f = src(); edit(f, seq.bodyEdit(f)); break; }
    case "import": {
      const f = seq.pick([...catalog.imported]);
      edit(f, seq.bodyEdit(f));
      break;
    }
    case "static": { const f = src(); edit(f, seq.newStatic(f)); break; }
    case "comment": { const f = src(); edit(f, seq.comment(f)); break; }
    case "header": {
      const small = [...catalog.headerUsers].filter(([, u]) => u.length >= 2 && u.length <= 12).map(([h]) => h);
      const h = seq.pick(small);
      edit(h, `${seq.read(h)}\n#define KTLD_SOAK_${seq.seed}_${seq.step} 1\n`);
      break;
    }
    case "undo": {
      // Sources the sequence added and the Makefiles naming them change together (newsrc, rmsrc).
      const files = [...seq.touched].filter(([f, v]) => !v.includes(null) && !/(^|\/)(Makefile|Kconfig)[^/]*$/.test(f)).map(([f]) => f);
      if (!files.length) { const f = src(); edit(f, seq.bodyEdit(f)); break; }
      const f = seq.pick(files);
      const versions = seq.touched.get(f)!;
      edit(f, seq.pick(versions.slice(0, -1))!);
      break;
    }
    case "kbuild": {
      // A kbuild file changed (a comment: nothing to rebuild): handed over to kbuild.
      const f = seq.pick(["kernel/Makefile", "init/Kconfig", "mm/Makefile"]);
      edit(f, `${seq.read(f)}# ktld soak ${seq.seed}.${seq.step}\n`);
      break;
    }
    case "newsrc":
    case "rmsrc": {
      // A source added to (or removed from) vmlinux with its Makefile line: kbuild's part.
      if (kind === "rmsrc" && seq.added.length) {
        const f = seq.added.splice(Math.floor(seq.rnd() * seq.added.length), 1)[0];
        const mk = path.join(path.dirname(f), "Makefile");
        edit(mk, seq.read(mk).replace(`obj-y += ${path.basename(f, ".c")}.o\n`, ""));
        edit(f, null);
        break;
      }
      const f = `kernel/ktld_soak_${seq.seed}_${seq.step}.c`;
      const fn = `ktld_soak_new_${seq.seed}_${seq.step}`;
      edit(f, `// SPDX-License-Identifier: GPL-2.0\n#include <linux/init.h>\n#include <linux/printk.h>\n\nstatic int __init ${fn}(void)\n{\n\tpr_info("${fn}\\n");\n\treturn 0;\n}\nlate_initcall(${fn});\n`);
      edit("kernel/Makefile", `${seq.read("kernel/Makefile")}obj-y += ${path.basename(f, ".c")}.o\n`);
      seq.added.push(f);
      break;
    }
    case "syntax": {
      const f = src();
      const good = seq.read(f);
      edit(f, `${good}\nint ktld_soak_broken_${seq.step} = ;\n`);
      log.expectFailure = true;
      break;
    }
    case "burst": {
      const f = src();
      for (let i = 0; i < 3; i++) {
        edit(f, seq.bodyEdit(f));
        await sleep(30 + Math.floor(seq.rnd() * 120));
      }
      break;
    }
    case "stash": {
      // Many files at once, as git writes them: stash the edits made so far (and a few
      // more), or bring the stash back (over whatever was edited since: no merge).
      let files: string[];
      if (stashed.on) {
        files = gitLines(tree, ["stash", "show", "--name-only"]);
        git(["checkout", "stash@{0}", "--", ...files]);
        git(["stash", "drop", "-q"]);
        git(["reset", "-q"]);
        stashed.on = false;
      } else {
        for (let i = 0; i < 4; i++) { const f = src(); edit(f, seq.bodyEdit(f)); }
        files = gitLines(tree, ["diff", "--name-only"]);
        git(["stash", "-q"]);
        stashed.on = true;
      }
      for (const f of files) {
        log.files.add(f);
        seq.touched.set(f, [...(seq.touched.get(f) ?? [seq.read(f)]), seq.read(f)]);
      }
      figures.edits += files.length;
      break;
    }
    case "during": {
      // An edit while a build runs: only counted when the build was seen running.
      const seen = await editUntilPhase(["FE", "thin-link", "BE"], 20_000);
      const g = src();
      edit(g, seq.bodyEdit(g));
      if (seen) figures.midBuildEdits++;
      else figures.notDone.push(`${kind} at step ${seq.step}: no build was seen running`);
      break;
    }
    case "crash": {
      // kill -9 at a named point of a build (src/base/killpoint.ts), the points in turn from
      // one the seed picks: the daemon is restarted aiming at it, a source of kernel/ (always
      // linked) gets a body edit, and the daemon must die there by its own hand. A planned
      // crash that does not fire fails the step.
      const point = THIN_KILL_POINTS[(seq.seed + figures.crashes) % THIN_KILL_POINTS.length];
      assert.equal(ktld(["stop", "--build-dir", tree]).status, 0);
      const killLog = path.join(path.dirname(tree), "kill.log");
      const armFile = path.join(path.dirname(tree), "kill.armed");
      fs.rmSync(killLog, { force: true });
      fs.rmSync(armFile, { force: true });
      startDaemon(tree, { KTLD_KILL_AT: point, KTLD_KILL_LOG: killLog, KTLD_KILL_ARM: armFile });
      const pid = status(tree).pid;
      // Armed once the daemon's startup is over: the build hit is the edit's.
      assert.equal(buildWait(tree).ok, true);
      fs.writeFileSync(armFile, "");
      // A statement in kernel/fork.c's free_task, which vmlinux always links (a random
      // function's edit can be compiled away, and then no build reaches the point).
      edit(FREE_TASK.file, seq.freeTaskEdit());
      await diedAt(pid, point, killLog, `step ${seq.step}: `);
      figures.crashes++;
      figures.crashPoints.push(point);
      log.nativesAfterCrash = hashesOf(tree, ".thinlto-native.o");
      startDaemon(tree);
      break;
    }
    case "corrupt": {
      // The daemon stopped, then its store and cache damaged: LMDB bytes flipped or the
      // file cut short, a cached native flipped. The next daemon must notice or not care.
      assert.equal(ktld(["stop", "--build-dir", tree]).status, 0);
      const state = path.join(tree, ".ktld");
      // lmdb keeps the store as one file, or as a directory holding data.mdb.
      const store = fs.statSync(path.join(state, "store")).isDirectory() ? path.join(state, "store", "data.mdb") : path.join(state, "store");
      if (fs.existsSync(store)) {
        // Bytes flipped and the file cut short in turn (CI's seed begins with the flips; the
        // cut is test/faults.test.ts's too).
        if ((seq.seed + figures.corruptions) % 2 === 0) flipBytes(store, seq.rnd, 64);
        else fs.truncateSync(store, Math.floor(fs.statSync(store).size * seq.rnd()));
        figures.corruptions++;
      }
      // Cached natives damaged each in its own way, in turn: bytes flipped, cut short,
      // deleted, replaced by another blob's bytes (every one must be caught by its hash).
      const blobs = blobsOf(state).filter((b) => !b.includes(`${path.sep}by-key${path.sep}`));
      for (let i = 0; i < Math.min(4, blobs.length); i++) {
        const b = seq.pick(blobs);
        const how = BLOB_DAMAGE[(seq.seed + figures.blobDamage.length) % BLOB_DAMAGE.length];
        if (!fs.existsSync(b)) continue;
        if (how === "flip") flipBytes(b, seq.rnd, 4);
        else if (how === "truncate") fs.truncateSync(b, Math.floor(fs.statSync(b).size * seq.rnd()));
        else if (how === "delete") fs.rmSync(b);
        else {
          const other = blobs.find((x) => x !== b && fs.existsSync(x));
          if (!other) continue;
          fs.copyFileSync(other, b);
        }
        figures.blobDamage.push(how);
        figures.corruptions++;
      }
      log.storeLost = true;
      log.restorable = restorableKeys(state);
      const f = src();
      edit(f, seq.bodyEdit(f));
      startDaemon(tree);
      break;
    }
  }
  return log;
}

function gitLines(tree: string, args: string[]): string[] {
  return execBounded("git", args, { cwd: tree, encoding: "utf8" }).split("\n").filter(Boolean);
}

describe(`soak: seeded edit sequences vs clean builds (seed ${SEED}, ${SEQUENCES} x ${STEPS} steps${SOAK ? ", soak mode" : ""})`, { timeout: SOAK ? 12 * 3600_000 : 50 * 60_000 }, () => {
  const tree = fixtureCopy("soak");
  const ref = new Reference(fixtureCopy("soak-ref"));
  after(() => ktld(["stop", "--build-dir", tree]));

  test("every quiet point equals a clean build; every job was called for", { timeout: SOAK ? 12 * 3600_000 : 45 * 60_000 }, async (t) => {
    // Settle the copy: whatever make finds to do after a copy must not happen inside the
    // comparison with kbuild's own link below.
    const settle = spawnBounded("make", [...MAKE_ARGS, "-s", "vmlinux"], { cwd: tree, env: fixtureEnv(), timeout: 20 * 60_000, encoding: "utf8" });
    assert.equal(settle.status, 0, String(settle.stderr).slice(-3000));
    startDaemon(tree);
    assert.equal(buildWait(tree).ok, true);
    const catalog = sourcesOf(tree);
    assert.ok(catalog.sources.length > 50 && catalog.imported.size > 5, "too few candidate sources");
    // A git repository over the candidate sources, for stash / pop of many files at once.
    const git = (args: string[]) => execBounded("git", ["-c", "user.name=ktld", "-c", "user.email=ktld@localhost", ...args], { cwd: tree, stdio: "ignore" });
    git(["init", "-q"]);
    fs.writeFileSync(path.join(tree, ".git/info/exclude"), "*\n");
    git(["add", "-f", ...catalog.sources]);
    git(["commit", "-q", "-m", "base"]);

    // The figures are said however the run ends: a failure late in a long run still tells
    // how many quiet points, crashes and corruptions came before it.
    const report = () => {
      t.diagnostic(`soak figures (seed ${SEED}, ${SEQUENCES} x ${STEPS} steps):`);
      for (const [k, v] of Object.entries(figures)) t.diagnostic(`  ${k.padEnd(18)} ${Array.isArray(v) ? v.length : v}`);
      for (const n of figures.notDone) t.diagnostic(`  not done: ${n}`);
      t.diagnostic(`  crash points: ${figures.crashPoints.join(", ") || "-"}; blob damage: ${figures.blobDamage.join(", ") || "-"}`);
      process.stdout.write(`\nktld soak figures (seed ${SEED}): ${JSON.stringify(figures)}\n`);
    };
    try {
      for (let s = 0; s < SEQUENCES; s++) {
        const seed = SEED + s;
        const seq = new Sequence(tree, seed, catalog);
        const kinds = kindsFor(seq.rnd, STEPS);
        const stashed = { on: false };
        figures.sequences++;
        let before = inputsOf(tree);
        let windowStart = Date.now();
        for (seq.step = 1; seq.step <= STEPS; seq.step++) {
          const kind = kinds[seq.step - 1];
          // The sequences share one tree and daemon: a replay runs the ones before too.
          const where = `seed ${seed}, step ${seq.step} (${kind}); replay with KTLD_SOAK=${SOAK ? 1 : 0} KTLD_SOAK_SEED=${SEED} KTLD_SOAK_SEQUENCES=${s + 1} KTLD_SOAK_STEPS=${STEPS} KTLD_SOAK_STOP=${s + 1}:${seq.step}`;
          const restorable = restorableKeys(path.join(tree, ".ktld"));
          const log = await runStep(seq, kind, git, stashed);
          figures.steps++;
          const b = buildWait(tree);
          const builds = entriesSince(tree, windowStart);
          figures.quietPoints++;
          if (log.expectFailure) {
            assert.equal(b.ok, false, `${where}: a syntax error built`);
            // Its fix is the next step's first edit.
            const f = [...log.files][0];
            const versions = seq.touched.get(f)!;
            seq.write(f, versions[versions.length - 2]);
            // The broken version is no version an undo may go back to (it never builds).
            versions.splice(versions.length - 2, 1);
            figures.edits++;
            log.files.add(f);
            const fixed = buildWait(tree);
            assert.equal(fixed.ok, true, `${where}: the fix did not build`);
          } else {
            const last = builds[builds.length - 1];
            assert.equal(b.ok, true, `${where}: ${last?.report.error ?? ""}\n${last?.report.diagnostics?.slice(-2000) ?? ""}`);
          }
          // Every build since the last check: those that started between it and this step too.
          const allBuilds = entriesSince(tree, windowStart);
          const now = inputsOf(tree);
          const { bad, redoneAfterDamage } = nonMinimalJobs(allBuilds, stepFacts(tree, log, before, now, log.restorable ?? restorable));
          figures.redoneAfterDamage += redoneAfterDamage;
          figures.nonMinimal += bad.length;
          assert.deepEqual(bad, [], `${where}: jobs nothing called for`);
          before = now;
          windowStart = Date.now();

          // The files that differ from the fixture, as they are now: the source state.
          const state = new Map([...seq.touched].filter(([f, v]) => seq.readOrNull(f) !== v[0]).map(([f]) => [f, seq.readOrNull(f)] as const));
          const got = outputsOf(tree);
          figures.compared++;
          // Every quiet point: the seed's recipe rebuilt from kbuild's records by the test's own
          // code (test/reference.ts: no ktld code on that side; its BE compiles memoized by
          // their inputs' content), and every object of vmlinux as kbuild's make made it in the
          // reference tree.
          const out = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-soak-recipe-"));
          try {
            ref.apply(state);
            const recipe = await referenceNatives(ref.tree, out, 2, "vmlinux.o", recipeMemo);
            const natives = hashesOf(tree, ".thinlto-native.o");
            const differ = [...recipe].filter(([o, h]) => natives.get(o.replace(/\.o$/, ".thinlto-native.o")) !== h).map(([o]) => o);
            const objects = importTree(ref.tree).objects.map((o) => o.path).filter((o) => hashFile(path.join(ref.tree, o)) !== got.get(o));
            figures.comparedWithRecipe++;
            figures.mismatches += differ.length || objects.length ? 1 : 0;
            assert.deepEqual(differ, [], `${where}: natives differ from the seed's recipe\n${mismatchStory(tree, log.files, allBuilds, differ)}`);
            assert.deepEqual(objects, [], `${where}: objects differ from kbuild's make`);
          } finally {
            fs.rmSync(out, { recursive: true, force: true });
          }
          // The last quiet point (in the soak the first one too): everything (vmlinux.o and
          // vmlinux too) against a clean ktld build from a fresh state dir. That shows ktld
          // deterministic, not right: the recipe above and kbuild's link below are the
          // references, so CI pays for one such build (a full BE), not two.
          if ((SOAK && figures.compared === 1) || (s === SEQUENCES - 1 && seq.step === STEPS)) {
            const want = ref.outputsFor(state);
            figures.comparedClean++;
            const diff = [...want.keys()].filter((k) => want.get(k) !== got.get(k));
            figures.mismatches += diff.length ? 1 : 0;
            assert.deepEqual(diff, [], `${where}: differs from a clean build\n${mismatchStory(tree, log.files, allBuilds, diff)}`);
          }
          // After a crash, and at the last quiet point of a sequence: vmlinux.o, vmlinux and
          // System.map against kbuild's own link steps over the natives (test/reference.ts links
          // vmlinux.o by kbuild's recorded command, then kbuild's make runs link-vmlinux.sh), the
          // daemon stopped meanwhile. Not once a stash step ran: git gives the files it puts
          // back new times with bytes ktld already built, which make (by times) compiles and
          // links again in process itself.
          if (kind === "stash") seq.timesMoved = true;
          if ((kind === "crash" || seq.step === STEPS) && !seq.timesMoved) {
            assert.equal(ktld(["stop", "--build-dir", tree]).status, 0);
            const linked = ["vmlinux.o", "vmlinux", "System.map"].map((f) => [f, hashFile(path.join(tree, f))] as const);
            await referenceVmlinuxO(tree);
            const mk = spawnBounded("make", [...MAKE_ARGS, "vmlinux"], { cwd: tree, env: fixtureEnv(), timeout: 20 * 60_000, encoding: "utf8" });
            assert.equal(mk.status, 0, `${where}: kbuild's link of the natives failed: ${String(mk.stderr).slice(-3000)}`);
            assert.doesNotMatch(String(mk.stdout), /^\s+LD\s+vmlinux\.o$/m, `${where}: make linked vmlinux.o itself`);
            figures.comparedWithKbuildLink++;
            const differ = linked.filter(([f, h]) => hashFile(path.join(tree, f)) !== h).map(([f]) => f);
            figures.mismatches += differ.length ? 1 : 0;
            assert.deepEqual(differ, [], `${where}: differs from kbuild's own link of the same natives`);
            startDaemon(tree);
          }
          if (STOP && Number(STOP[1]) === s + 1 && Number(STOP[2]) === seq.step) break;
        }
        if (STOP && Number(STOP[1]) === s + 1) break;
        // Back to the fixture's sources for the next sequence.
        if (stashed.on) git(["stash", "drop", "-q"]);
        for (const [f, versions] of seq.touched) {
          if (seq.readOrNull(f) === versions[0]) continue;
          if (versions[0] === null) fs.rmSync(path.join(tree, f), { force: true });
          else fs.writeFileSync(path.join(tree, f), versions[0]);
        }
        assert.equal(buildWait(tree).ok, true);
      }
    } finally {
      report();
    }
    // CI's seed has its crash before its stash: the comparison with kbuild's link ran.
    if (!SOAK && SEED === 4242) assert.ok(figures.comparedWithKbuildLink >= 1, "no quiet point was compared with kbuild's own link");
    assert.equal(figures.mismatches, 0);
    assert.equal(figures.nonMinimal, 0);
  });
});
