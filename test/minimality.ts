// The soak's minimality check, as a pure function over what a step did and the builds it
// caused: every job of every build must have been called for, judged from the bytes the test
// hashed itself. Kept apart so that a test
// can plant superfluous jobs and see the check fire (test/unit.test.ts).
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

export interface StepBuild {
  readonly id: number;
  readonly report: {
    readonly backend: { readonly jobs: readonly { object: string; action: string; reason: string; key?: string }[] };
    readonly frontendJobs: readonly { object: string; reason: string }[];
    readonly kbuild: readonly string[];
  };
}

export interface StepFacts {
  /** Sources and headers the step wrote (build-dir relative). */
  readonly files: ReadonlySet<string>;
  /** Hashes of every bitcode object, index and imports file before the step and now. */
  readonly before: ReadonlyMap<string, string>;
  readonly now: ReadonlyMap<string, string>;
  /** An object's source and headers, as kbuild's .cmd file lists them. */
  readonly inputsOf: (object: string) => readonly string[];
  /** The modules an object imports from (its .imports file). */
  readonly importsOf: (object: string) => readonly string[];
  /** Cache keys whose native was cached intact when the step began. */
  readonly restorable: ReadonlySet<string>;
  /** Objects whose native a crash removed or changed: their hashes right after the crash
   * against those at the step's start (the test's own, never ktld's word). Redoing them is
   * called for. */
  readonly damaged: ReadonlySet<string>;
  /** The store was lost (ktld then judges files by the hash notes beside it: an FE job
   * without a changed input is as wrong then as ever; it is counted apart as well). */
  readonly storeLost: boolean;
}

export interface Minimality {
  readonly bad: string[];
  readonly redoneAfterDamage: number;
}

/** Jobs of any of the step's builds that nothing in the step called for. */
export function nonMinimalJobs(builds: readonly StepBuild[], f: StepFacts): Minimality {
  const bad: string[] = [];
  let redoneAfterDamage = 0;
  const changed = (file: string) => f.before.get(file) !== f.now.get(file);
  for (const b of builds) {
    // A build that handed over to kbuild has no FE jobs of ktld's (make ran them, by its
    // own rules); its BE jobs are ktld's and are held to the same rule as any.
    for (const j of b.report.kbuild.length ? [] : b.report.frontendJobs) {
      if (f.inputsOf(j.object).some((i) => f.files.has(i)) || /failed/.test(j.reason)) continue;
      if (f.storeLost) redoneAfterDamage++;
      bad.push(`#${b.id} FE ${j.object} (${j.reason})`);
    }
    for (const j of b.report.backend.jobs) {
      // Called for by bytes alone: its bitcode, index or an imported module's bitcode changed,
      // or a crash took its native away. ktld's reason text is only shown.
      const called = changed(j.object) || changed(`${j.object}.thinlto.bc`) || f.importsOf(j.object).some((i) => changed(i))
        || f.damaged.has(j.object);
      if (!called) bad.push(`#${b.id} BE ${j.object} (${j.action}: ${j.reason})`);
      else if (j.action === "compile" && j.key !== undefined && f.restorable.has(j.key)) {
        bad.push(`#${b.id} BE ${j.object} compiled where its cached native could be restored (${j.reason})`);
      }
    }
  }
  return { bad, redoneAfterDamage };
}

/** Keys whose cached native is there and intact, read from ktld's blob dir as files: the
 * notes beside the blobs (`blobs/by-key/xx/<key>`, JSON with `native`) and the blobs named
 * by their sha256 (`blobs/xx/<hash>`). */
export function restorableKeys(stateDir: string): Set<string> {
  const out = new Set<string>();
  const notes = path.join(stateDir, "blobs", "by-key");
  if (!fs.existsSync(notes)) return out;
  const intact = new Map<string, boolean>();
  for (const sub of fs.readdirSync(notes)) {
    for (const key of fs.readdirSync(path.join(notes, sub))) {
      if (key.includes(".tmp-")) continue;
      let native: unknown;
      try {
        native = (JSON.parse(fs.readFileSync(path.join(notes, sub, key), "utf8")) as { native?: unknown }).native;
      } catch {
        continue;
      }
      if (typeof native !== "string") continue;
      if (!intact.has(native)) {
        const blob = path.join(stateDir, "blobs", native.slice(0, 2), native);
        intact.set(native, fs.existsSync(blob) && createHash("sha256").update(fs.readFileSync(blob)).digest("hex") === native);
      }
      if (intact.get(native)) out.add(key);
    }
  }
  return out;
}
