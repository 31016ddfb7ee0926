// kbuild's final link (scripts/Makefile.vmlinux's vmlinux: link-vmlinux.sh, then the arch's
// post-link step) run by ktld from the tree's own script and records, with the second
// kallsyms link started from the last link's kallsyms object (src/kbuild/linkscript.ts says
// why that is kbuild's link when the first pass lays out as that object did).
import * as fs from "node:fs";
import * as path from "node:path";
import { runStep } from "./base/process";
import { cmdFilePath, parseCmdFile } from "./kbuild/cmdfile";
import type { KbuildTree } from "./kbuild/tree";
import { FIRST_PASS, LinkScript, parseState, parseVmlinuxCommand, parts, readLinkScript, sameLayout, ScriptState, dumpState, sysmapBesideSort } from "./kbuild/linkscript";
import { elfLayout } from "./elf";
import type { StepClock } from "./stepclock";

/** How ktld runs the final link of this tree; a reason when it leaves it to kbuild's make. */
export type FinalLinkPlan =
  | { readonly script: LinkScript; readonly scriptPath: string; readonly args: readonly string[]; readonly postlink: string; readonly stateDir: string }
  | { readonly make: string };

/** Reads the tree's link-vmlinux.sh and kbuild's record of the vmlinux command, and checks
 * that the record is what the Makefile would run now (its arguments from kbuild's
 * environment): else make runs it, and records it. */
export function planFinalLink(tree: KbuildTree, env: Record<string, string>, stateDir: string | undefined): FinalLinkPlan {
  if (!stateDir) return { make: "no state dir to keep the last kallsyms object in" };
  if (env.KBUILD_VERBOSE?.includes("1")) return { make: "KBUILD_VERBOSE asks for make's trace" };
  if (tree.config.get("CONFIG_BUILTIN_MODULE_RANGES") === "y") return { make: "CONFIG_BUILTIN_MODULE_RANGES: Makefile.vmlinux makes more than vmlinux" };
  let text: string;
  let rec: string | undefined;
  try {
    text = fs.readFileSync(path.join(tree.srcTree, "scripts/link-vmlinux.sh"), "utf8");
    const file = path.join(tree.buildDir, cmdFilePath("vmlinux"));
    rec = fs.existsSync(file) ? parseCmdFile(fs.readFileSync(file, "utf8"), cmdFilePath("vmlinux"))?.command : undefined;
  } catch (e) {
    return { make: `link-vmlinux.sh or .vmlinux.cmd unreadable: ${(e as Error).message}` };
  }
  const script = readLinkScript(text);
  if ("unknown" in script) return { make: `link-vmlinux.sh of a shape ktld does not know: ${script.unknown}` };
  const cmd = rec === undefined ? undefined : parseVmlinuxCommand(rec);
  if (!cmd) return { make: "no record of kbuild's vmlinux command (.vmlinux.cmd) ktld can read" };
  const now = [env.LD ?? "", env.KBUILD_LDFLAGS ?? "", env.LDFLAGS_vmlinux ?? ""];
  if (cmd.args.some((a, i) => a !== now[i])) return { make: "kbuild's recorded vmlinux command is not its Makefile's now" };
  return { script, scriptPath: cmd.script, args: cmd.args, postlink: cmd.postlink, stateDir };
}

/** What the kallsyms passes did. */
export interface KallsymsOutcome {
  /** The second link started from the last link's kallsyms object, and it was kbuild's. */
  readonly fromLast: boolean;
  readonly reason: string;
}

/** The kallsyms object of the last link, kept for the next one's second link. */
export function lastKallsymsPath(stateDir: string): string {
  return path.join(stateDir, "kallsyms-last.o");
}

/** Runs Makefile.vmlinux's vmlinux as `plan` has it. `make` builds `.vmlinux.export.o` (the
 * Makefile's other target). Returns what the kallsyms passes did. */
export async function runFinalLink(opts: {
  tree: KbuildTree; env: Record<string, string>; clock: StepClock;
  plan: Exclude<FinalLinkPlan, { make: string }>; make: (target: string) => readonly string[];
  /** Awaited before anything else (the image pahole runs ahead on is linked, src/btfahead.ts). */
  beforeStart?: () => Promise<unknown>;
  /** Awaited before the BTF step (pahole run ahead settles). */
  beforeBtf?: () => Promise<unknown>;
}): Promise<KallsymsOutcome | undefined> {
  const { tree, env, clock, plan } = opts;
  const dir = tree.buildDir;
  // In the build dir beside the script's own temp files (the state dir may be full: the
  // kept kallsyms object is then not kept, and nothing else is lost).
  const stateFile = path.join(dir, ".tmp_vmlinux.ktld-state");
  const sh = (body: string, step: string, marks = true) =>
    runStep(dir, ["/bin/sh", "-c", body, plan.scriptPath, ...plan.args], env, step, undefined, undefined, marks ? clock.follow : undefined);
  const withState = async (body: string, step: string): Promise<ScriptState> => {
    fs.rmSync(stateFile, { force: true });
    await sh(`${body}${dumpState(stateFile)}`, step);
    return parseState(fs.readFileSync(stateFile, "utf8"));
  };
  try {
    await opts.beforeStart?.();
    clock.mark("link-vmlinux.sh");
    if (tree.config.get("CONFIG_MODULES") === "y") {
      await runStep(dir, opts.make(".vmlinux.export.o"), env, "CC .vmlinux.export.o", undefined, undefined, clock.follow);
    }
    const s = plan.script;
    let state = await withState(parts.first(s), "link-vmlinux.sh");
    let kallsyms: KallsymsOutcome | undefined;
    let done: "none" | "first" | "second" = "none";
    const kp = lastKallsymsPath(plan.stateDir);
    // Off unless asked for: an edit of a unit with promoted locals renames them
    // (`f.llvm.<hash>`), the first pass's object then differs, and on the bench's edits the
    // shortcut never stood (docs/benchmarks.md). The object is kept either way (a copy of
    // under 1 MB), so that turning it on finds one.
    const tried = process.env.KTLD_KALLSYMS_FROM_LAST === "1";
    const why = tree.config.get("CONFIG_KALLSYMS") !== "y" ? undefined
      : !tried ? "the second link from the last kallsyms object is off (KTLD_KALLSYMS_FROM_LAST=1)"
        : env.KALLSYMS_EXTRA_PASS ? "KALLSYMS_EXTRA_PASS is set"
          : !fs.existsSync(kp) ? "no kallsyms object of a last link"
            : /\s/.test(kp) ? "the state dir's path has a space (the script splits its objects' names)"
              : !state.kallsymso ? "the script made no empty kallsyms object" : undefined;
    const passes = tree.config.get("CONFIG_KALLSYMS") === "y";
    let firstPass: Promise<unknown> | undefined;
    if (passes) {
      // The first pass's symbols before the BTF step rewrites .tmp_vmlinux1 (its symbols stay
      // as they are); then that pass beside the BTF step.
      await sh(parts.firstSyms(s), "NM .tmp_vmlinux1.syms");
      firstPass = clock.time("kallsyms .tmp_vmlinux1 (beside)", () => sh(parts.firstPass(s), "kallsyms .tmp_vmlinux1", false));
      firstPass.catch(() => undefined);
    }
    if (opts.beforeBtf) {
      clock.mark("pahole ahead");
      await opts.beforeBtf();
    }
    state = await withState(parts.btf(s, state), "BTF");
    if (passes && why === undefined) {
      // The second link from the last kallsyms object, beside the first pass.
      let second: string | undefined;
      try {
        await sh(parts.secondFromLast(s, state, kp), "LD .tmp_vmlinux2");
      } catch (e) {
        second = `its link with the last kallsyms object failed (${(e as Error).message.split("\n")[0]})`;
      }
      await firstPass;
      done = "first";
      if (second === undefined) {
        let layout: ReturnType<typeof sameLayout>;
        try {
          layout = sameLayout(elfLayout(path.join(dir, FIRST_PASS.object)), elfLayout(kp));
        } catch (e) {
          layout = { same: false, why: `unreadable (${(e as Error).message})` };
        }
        if (layout.same) done = "second";
        else second = `the first pass's kallsyms object is unlike the last link's: ${layout.why}`;
      }
      kallsyms = done === "second"
        ? { fromLast: true, reason: "the second link started from the last link's kallsyms object, beside the first pass, whose object lays out as that one (the same sections and symbols)" }
        : { fromLast: false, reason: `kbuild's second link and pass ran after the first: ${second}` };
    } else {
      if (firstPass) {
        await firstPass;
        done = "first";
      }
      if (why) kallsyms = { fromLast: false, reason: `kbuild's passes: ${why}` };
    }
    const final = await withState(parts.finish(s, state, done), "LD vmlinux");
    if (plan.postlink) await sh(plan.postlink, "postlink vmlinux");
    // make's if_changed_dep would turn the script's .vmlinux.d into .vmlinux.cmd: the
    // command and its dependencies are the recorded ones, so the record stays as it is.
    fs.rmSync(path.join(dir, ".vmlinux.d"), { force: true });
    if (final.kallsymso) keepKallsyms(path.join(dir, final.kallsymso), kp);
    return kallsyms;
  } finally {
    clock.endMark();
    if (sysmapBesideSort(plan.script.rest) !== undefined) clock.note("SORTTAB vmlinux", "System.map made beside it: the sort rewrites nothing nm reads; the script's kallsyms check after both");
    fs.rmSync(stateFile, { force: true });
  }
}

/** The final link's kallsyms object, kept for the next second link (written whole or not at all). */
function keepKallsyms(from: string, to: string): void {
  const tmp = `${to}.tmp-${process.pid}`;
  // A process killed while copying left its temp file.
  for (const f of fs.readdirSync(path.dirname(to))) if (f.startsWith(`${path.basename(to)}.tmp-`)) fs.rmSync(path.join(path.dirname(to), f), { force: true });
  try {
    fs.copyFileSync(from, tmp);
    fs.renameSync(tmp, to);
  } catch {
    fs.rmSync(tmp, { force: true });
  }
}
