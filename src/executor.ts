// BE jobs as distributors read them: a batch of BE compiles described in the JSON of LLVM's
// Distributed ThinLTO (DTLTO, LLVM 21: `{"common": {"linker_output", "args", "inputs"},
// "jobs": [{"args", "inputs", "outputs"}]}`; a job's command is common.args + its args, run
// from the build dir, every path relative to it) and handed to an external executor
// (`--be-executor CMD`: ktld runs `CMD <batch.json>` from the build dir and checks each output
// it finds there). Pure: the phase (src/backendphase.ts) writes the file and runs the command.
import * as path from "node:path";
import { importsPath, indexPath } from "./kbuild/names";

export interface DtltoJob {
  readonly args: readonly string[];
  readonly inputs: readonly string[];
  readonly outputs: readonly string[];
}

export interface DtltoBatch {
  readonly common: { readonly linker_output: string; readonly args: readonly string[]; readonly inputs: readonly string[] };
  readonly jobs: readonly DtltoJob[];
}

/** One BE compile: its argv (argv[0] the compiler), the unit's bitcode, the modules its
 * index imports from, the files its inline assembly `.incbin`s, and where it writes. */
export interface BackendJobSpec {
  readonly argv: readonly string[];
  readonly object: string;
  readonly imports: readonly string[];
  readonly incbin: readonly string[];
  readonly output: string;
}

/** The complete input set of one BE job: what clang reads when it runs it. The `.imports`
 * file is not read by clang; it is listed so that an executor can check the set itself. */
export function backendJobInputs(spec: BackendJobSpec): string[] {
  return [...new Set([spec.object, indexPath(spec.object), importsPath(spec.object), ...spec.imports, ...spec.incbin])];
}

/** The batch of `specs` in DTLTO's JSON shape. Every job's compiler must be the same (it goes
 * into common.args); `linkerOutput` names what the batch is for (vmlinux.o, a module). */
export function dtltoBatch(specs: readonly BackendJobSpec[], linkerOutput: string): DtltoBatch {
  const compiler = specs[0]?.argv[0] ?? "clang";
  for (const s of specs) if (s.argv[0] !== compiler) throw new Error(`BE jobs with two compilers in one batch: ${compiler} and ${s.argv[0]}`);
  return {
    common: { linker_output: linkerOutput, args: [compiler], inputs: [] },
    jobs: specs.map((s) => ({ args: s.argv.slice(1), inputs: backendJobInputs(s), outputs: [s.output] })),
  };
}

/** How deep below its root a job's working dir must be so that every `../` path of the batch
 * stays inside the root (an `O=` build dir's relative paths reach its source tree). */
export function upLevels(paths: readonly string[]): number {
  let n = 0;
  for (const p of paths) {
    const parts = path.normalize(p).split("/");
    let k = 0;
    while (parts[k] === "..") k++;
    n = Math.max(n, k);
  }
  return n;
}
