// The soak's minimality check must be able to fail: superfluous FE and BE jobs, and a
// compile where a restore would do, planted into a step, are each caught.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createHash } from "node:crypto";
import { test } from "node:test";
import { nonMinimalJobs, restorableKeys, StepBuild, StepFacts } from "./minimality";

const facts = (over: Partial<StepFacts> = {}): StepFacts => ({
  files: new Set(["kernel/fork.c"]),
  before: new Map([["kernel/fork.o", "a"], ["kernel/fork.o.thinlto.bc", "i1"], ["kernel/exit.o", "e"], ["kernel/exit.o.thinlto.bc", "x1"], ["mm/mmap.o", "m"], ["mm/mmap.o.thinlto.bc", "y"]]),
  now: new Map([["kernel/fork.o", "b"], ["kernel/fork.o.thinlto.bc", "i2"], ["kernel/exit.o", "e"], ["kernel/exit.o.thinlto.bc", "x2"], ["mm/mmap.o", "m"], ["mm/mmap.o.thinlto.bc", "y"]]),
  inputsOf: (o) => ({ "kernel/fork.o": ["kernel/fork.c", "include/linux/sched.h"], "mm/mmap.o": ["mm/mmap.c", "include/linux/mm.h"] } as Record<string, string[]>)[o] ?? [],
  importsOf: (o) => (o === "kernel/exit.o" ? ["kernel/fork.o"] : []),
  restorable: new Set(["k-cached"]),
  damaged: new Set(),
  storeLost: false,
  ...over,
});

const build = (fe: string[], be: { object: string; action?: string; reason?: string; key?: string }[]): StepBuild => ({
  id: 7,
  report: {
    frontendJobs: fe.map((object) => ({ object, reason: "source changed" })),
    backend: { jobs: be.map((j) => ({ object: j.object, action: j.action ?? "compile", reason: j.reason ?? "index changed", key: j.key ?? `k-${j.object}` })) },
    kbuild: [],
  },
});

test("minimality: the jobs a step called for pass", () => {
  const ok = build(["kernel/fork.o"], [{ object: "kernel/fork.o" }, { object: "kernel/exit.o" }]);
  assert.deepEqual(nonMinimalJobs([ok], facts()).bad, []);
});

test("minimality self-test: a planted FE job, a planted BE job and a compile instead of a restore are caught, in any build of the step", () => {
  const first = build(["kernel/fork.o", "mm/mmap.o"], [{ object: "kernel/fork.o" }]);
  const second = build([], [{ object: "kernel/exit.o", key: "k-cached" }, { object: "mm/mmap.o", reason: "inputs changed" }]);
  const { bad } = nonMinimalJobs([first, second], facts());
  assert.equal(bad.length, 3, bad.join("\n"));
  assert.match(bad[0], /FE mm\/mmap\.o/);
  assert.match(bad[1], /BE kernel\/exit\.o compiled where its cached native could be restored/);
  assert.match(bad[2], /BE mm\/mmap\.o/);
});

test("minimality: after a crash, redoing a native the crash took is called for; ktld's reason alone calls for nothing", () => {
  const redo = build([], [{ object: "mm/mmap.o", reason: "native missing" }]);
  assert.deepEqual(nonMinimalJobs([redo], facts({ damaged: new Set(["mm/mmap.o"]) })).bad, []);
  // The same job and reason, the native intact by the test's hashes: superfluous.
  assert.equal(nonMinimalJobs([redo], facts()).bad.length, 1);
  assert.equal(nonMinimalJobs([redo], facts({ damaged: new Set(["kernel/fork.o"]) })).bad.length, 1);
  const again = build([], [{ object: "mm/mmap.o", reason: "native missing", key: "k-cached" }]);
  assert.equal(nonMinimalJobs([again], facts({ damaged: new Set(["mm/mmap.o"]) })).bad.length, 1, "a compile of a restorable key after a crash");
});

test("restorable keys: notes whose blob is there and intact", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-restorable-"));
  const blob = (bytes: string) => {
    const h = createHash("sha256").update(bytes).digest("hex");
    fs.mkdirSync(path.join(dir, "blobs", h.slice(0, 2)), { recursive: true });
    fs.writeFileSync(path.join(dir, "blobs", h.slice(0, 2), h), bytes);
    return h;
  };
  const note = (key: string, native: string) => {
    fs.mkdirSync(path.join(dir, "blobs", "by-key", key.slice(0, 2)), { recursive: true });
    fs.writeFileSync(path.join(dir, "blobs", "by-key", key.slice(0, 2), key), JSON.stringify({ native, size: 1, object: "a.o" }));
  };
  const good = blob("good");
  const bad = blob("bad");
  fs.writeFileSync(path.join(dir, "blobs", bad.slice(0, 2), bad), "flipped");
  note("aa01", good);
  note("aa02", bad);
  note("bb03", "0".repeat(64));
  assert.deepEqual([...restorableKeys(dir)].sort(), ["aa01"]);
  fs.rmSync(dir, { recursive: true, force: true });
});

test("minimality: after a lost store, an FE job nothing called for still fails (and is counted)", () => {
  const r = nonMinimalJobs([build(["mm/mmap.o"], [])], facts({ storeLost: true }));
  assert.equal(r.bad.length, 1);
  assert.equal(r.redoneAfterDamage, 1);
});

test("minimality: a build that handed over to kbuild is held to the same rule for its BE jobs", () => {
  const handover = (be: { object: string }[]): StepBuild => ({ ...build([], be), report: { ...build([], be).report, kbuild: ["kernel/Makefile changed"] } });
  // A new unit (no hash before) and the units whose index changed: called for.
  const added = facts({ now: new Map([...facts().now, ["kernel/ktld_new.o", "n"], ["kernel/ktld_new.o.thinlto.bc", "nx"]]) });
  assert.deepEqual(nonMinimalJobs([handover([{ object: "kernel/ktld_new.o" }, { object: "kernel/exit.o" }])], added).bad, []);
  // A unit nothing changed for: caught, hand-over or not.
  const bad = nonMinimalJobs([handover([{ object: "mm/mmap.o" }])], added).bad;
  assert.equal(bad.length, 1);
  assert.match(bad[0], /BE mm\/mmap\.o/);
});
