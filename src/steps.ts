// The planning of the steps that run once per link target (the thin-link, the native link)
// or once per build (kbuild's module steps): pure functions from what the last run recorded and what the inputs are now to a
// key and a decision with its reason. vmlinux (src/build.ts) and each kernel module
// (src/modulebuild.ts) plan their steps with these; the BE plans each unit with
// `planBackend` (src/backend.ts), the FE with the change plan (src/graph.ts).
import { importsPath, indexPath } from "./kbuild/names";
import { Hash, hashFields } from "./base/hash";
import type { ModulesFinalRecord, ThinLinkRecord } from "./store";

/** A step's decision: run it, or keep what its last run left; and why. */
export interface StepPlan {
  readonly run: boolean;
  readonly reason: string;
}

/** A file's content hash as the build sees it now (null or undefined: missing). */
export type HashOf = (file: string) => Hash | null | undefined;

const hashOrMissing = (hashOf: HashOf, f: string) => hashOf(f) ?? "<missing>";

/** What a thin-link reads: its command line (with the staging dir as a placeholder) and
 * every input object by content, in order. */
export function thinLinkKey(argv: readonly string[], objects: readonly string[], hashOf: HashOf): Hash {
  return hashFields([...argv, ...objects.map((o) => `${o}\0${hashOrMissing(hashOf, o)}`)]);
}

/** What a thin-link left: each loaded unit's index and imports files, by content. */
export function thinLinkOutputs(units: readonly string[], hashOf: HashOf): Hash {
  return hashFields(units.flatMap((u) => [u, hashOrMissing(hashOf, indexPath(u)), hashOrMissing(hashOf, importsPath(u))]));
}

/** Run the thin-link unless its inputs are those of the last one and its outputs are
 * still the files it wrote (another tool, or a user, may have rewritten an index file). */
export function planThinLink(last: ThinLinkRecord | undefined, key: Hash, outputsNow: (units: readonly string[]) => Hash): StepPlan {
  if (!last) return { run: true, reason: "no thin-link on record" };
  if (last.key !== key) return { run: true, reason: "an object it reads changed" };
  if (last.outputs !== outputsNow(last.units)) return { run: true, reason: "its index or imports files changed since it wrote them" };
  return { run: false, reason: "every object as the last thin-link read it" };
}

/** What a native link reads: its command line, every input by content, and the command
 * that follows it (objtool). */
export function linkKey(argv: readonly string[], inputs: readonly string[], after: string, hashOf: HashOf): Hash {
  return hashFields([...argv, ...inputs.map((i) => hashOrMissing(hashOf, i)), after]);
}

/** Run the link unless its key is the last link's and its output is still the file that
 * link made (`output`: what the output is now against the record, judged by the caller). */
export function planLink(lastKey: Hash | undefined, key: Hash, output: "as made" | "missing" | "changed", target: string): StepPlan {
  if (lastKey === undefined) return { run: true, reason: "no link on record" };
  if (output === "missing") return { run: true, reason: `${target} is missing` };
  if (lastKey !== key) return { run: true, reason: "an input or its command changed" };
  if (output === "changed") return { run: true, reason: `${target} is not the file the last link made` };
  return { run: false, reason: "every input as the last link read it" };
}

/** What kbuild's module steps (modpost, the `.ko` link, BTF; src/modulebuild.ts) would
 * find, as the build saw it. */
export interface ModulesFinalState {
  /** Module objects ktld relinked in this build. */
  readonly relinkedModules: number;
  readonly vmlinuxRelinked: boolean;
  /** Every placed module has its `.ko`. */
  readonly kosPresent: boolean;
  /** Every `.ko` is newer than its module object and `.mod.o` (asked only when it decides). */
  readonly kosCurrent: () => boolean;
  /** The modules are installed where `--install-mod-path` says (true without it). */
  readonly installed: boolean;
}

/** Run kbuild's module steps, or not: not at all when nothing they read moved; skipped (the
 * outputs' times settled) when only vmlinux was relinked and its symbol versions and BTF are
 * those the modules were made against (`last` against `now()`, read only then: it reads
 * vmlinux's .BTF). */
export function planModulesFinal(st: ModulesFinalState, last: ModulesFinalRecord | undefined, now: () => ModulesFinalRecord): StepPlan & { settle?: boolean } {
  if (!st.relinkedModules && !st.vmlinuxRelinked && st.kosPresent && st.installed) return { run: false, reason: "no module object and not vmlinux relinked" };
  if (st.relinkedModules) return { run: true, reason: `${st.relinkedModules} module object(s) relinked` };
  if (!st.kosPresent) return { run: true, reason: "a .ko is missing" };
  if (!st.installed) return { run: true, reason: "the modules are not installed" };
  if (!st.kosCurrent()) return { run: true, reason: "a .ko is older than its module object" };
  if (!last) return { run: true, reason: "no record of the module steps" };
  const cur = now();
  if (last.symvers === null || last.symvers !== cur.symvers) return { run: true, reason: "vmlinux's symbol versions changed" };
  if (last.btf === null || last.btf !== cur.btf) return { run: true, reason: "vmlinux's BTF changed" };
  const names = Object.keys(cur.kos);
  if (names.length !== Object.keys(last.kos).length || !names.every((k) => cur.kos[k] !== null && last.kos[k] === cur.kos[k])) {
    return { run: true, reason: "a .ko is not the one they made" };
  }
  return { run: false, settle: true, reason: "vmlinux's symbol versions and BTF are those the modules were made against" };
}
