// BE jobs handed to an executor as DTLTO's JSON (src/executor.ts) and run by the reference
// executor (src/beexec.ts), each in an empty directory holding only the files the batch
// lists for it: the natives must be the recipe's (test/reference.ts, kbuild's `.cmd` files and
// no ktld code), every one made by the executor, none compiled here; and the executor must
// fail a job whose listed inputs miss what clang reads, so that passing says the sets are whole.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { describe, test } from "node:test";
import { fixtureEnv } from "../scripts/fixture";
import type { DtltoBatch } from "../src/executor";
import { fixtureCopy, hashesOf, spawnBounded, spawnBoundedAsync } from "./helpers";
import { referenceNatives } from "./reference";

const KTLD = path.resolve(__dirname, "../client/ktld.js");
const BEEXEC = path.resolve(__dirname, "../src/beexec.js");

interface Report {
  ok: boolean;
  error?: string;
  backend: { compiled: number; cacheHits: number; jobs: { object: string; action: string; reason: string }[] };
}

describe("BE jobs through an executor, each in an empty dir with its listed inputs", { timeout: 40 * 60_000 }, () => {
  const tree = fixtureCopy("executor");
  const stateDir = path.join(tree, ".ktld");

  test("a first build: every native made by the reference executor, each the recipe's", async () => {
    const executor = `${process.execPath} ${BEEXEC} -j2`;
    const r = await spawnBoundedAsync(process.execPath, [KTLD, "build", "--build-dir", tree, "--json", "-j2", "--be-executor", executor], { env: fixtureEnv(), timeout: 30 * 60_000 });
    assert.ok(r.stdout, r.stderr.slice(-3000));
    const report = JSON.parse(r.stdout) as Report;
    assert.equal(report.ok, true, `${report.error}\n${r.stderr.slice(-3000)}`);
    const compiles = report.backend.jobs.filter((j) => j.action === "compile");
    assert.ok(compiles.length > 100, `only ${compiles.length} BE compiles in a first build`);
    const here = compiles.filter((j) => !j.reason.endsWith("(by the executor)"));
    assert.deepEqual(here.map((j) => `${j.object}: ${j.reason}`), [], "BE jobs compiled here instead of by the executor");
    assert.match(r.stderr, new RegExp(`the executor returned ${compiles.length} of ${compiles.length} natives whole\n`));
    const batch = JSON.parse(fs.readFileSync(path.join(stateDir, "be-batch.json"), "utf8")) as DtltoBatch;
    assert.equal(batch.jobs.length, compiles.length);
    const want = await referenceNatives(tree, path.join(path.dirname(tree), "reference"), 2);
    const have = new Map([...hashesOf(tree, ".thinlto-native.o")].map(([f, h]) => [f.replace(/\.thinlto-native\.o$/, ".o"), h]));
    const wrong = [...want].filter(([o, h]) => have.get(o) !== h).map(([o]) => o);
    assert.equal(want.size, compiles.length);
    assert.deepEqual(wrong, [], "natives made by the executor that are not the recipe's");
  });

  test("a job whose input set leaves out an imported module fails in its empty dir", () => {
    const batch = JSON.parse(fs.readFileSync(path.join(stateDir, "be-batch.json"), "utf8")) as DtltoBatch;
    // A job that imports from another module: its bitcode is an input clang reads.
    const job = batch.jobs.find((j) => j.inputs.filter((f) => f.endsWith(".o")).length > 1);
    assert.ok(job, "no BE job imports from another module: nothing to prove");
    const own = job.inputs[0];
    const cut: DtltoBatch = { common: batch.common, jobs: [{ ...job, inputs: job.inputs.filter((f) => !f.endsWith(".o") || f === own) }] };
    const whole: DtltoBatch = { common: batch.common, jobs: [job] };
    const dir = path.dirname(tree);
    fs.writeFileSync(path.join(dir, "cut.json"), JSON.stringify(cut));
    fs.writeFileSync(path.join(dir, "whole.json"), JSON.stringify(whole));
    const ok = spawnBounded(process.execPath, [BEEXEC, path.join(dir, "whole.json")], { cwd: tree, timeout: 10 * 60_000 });
    assert.equal(ok.status, 0, `the job with its whole input set failed: ${ok.stderr}`);
    const bad = spawnBounded(process.execPath, [BEEXEC, path.join(dir, "cut.json")], { cwd: tree, timeout: 10 * 60_000 });
    // clang 19 exits 0 here, with an empty object and "Error loading imported file": the
    // executor goes by what was written.
    assert.equal(bad.status, 1, "the job ran although an imported module's bitcode was not given to it");
    assert.match(bad.stderr, /beexec: .*(not a whole ELF object|wrote no|exit 1).*Error loading imported file/);
  });
});
