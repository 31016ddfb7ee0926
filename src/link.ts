// The native link: vmlinux.o from the natives in kbuild's link order with kbuild's own
// flags, objtool as kbuild runs it, then kbuild's remaining vmlinux steps.
import * as fs from "node:fs";
import * as path from "node:path";
import { nativePath } from "./kbuild/names";
import { BuildFailure, Cancelled } from "./base/errors";
import { Hash, hashFields, hashFile } from "./base/hash";
import { CmdFile, cmdFilePath, parseCmdFile } from "./kbuild/cmdfile";
import { KbuildTree, LinkObject } from "./kbuild/tree";
import { runProcess, runStep } from "./base/process";
import type { BtfOutcome, BtfStep } from "./btf";
import type { InitcallRecord } from "./store";
import { planVmlinuxO, VMLINUX_O_SCRIPT } from "./kbuild/ldscript";
import { StepClock } from "./stepclock";
import { KallsymsOutcome, planFinalLink, runFinalLink } from "./finallink";
import { AHEAD_IMAGE, AHEAD_INPUT, BtfAhead, refuseBtfAhead, startBtfAhead } from "./btfahead";
import { parts } from "./kbuild/linkscript";

/** The link inputs: each bitcode module the thin-link loaded becomes its native, other
 * objects stay as they are, and lazy bitcode members the thin-link did not load are left
 * out, as the linker would have. */
export function nativeInputs(objects: readonly LinkObject[], loaded: ReadonlySet<string>): LinkObject[] {
  const out: LinkObject[] = [];
  for (const o of objects) {
    if (!o.bitcode) out.push(o);
    else if (loaded.has(o.path)) out.push({ ...o, path: nativePath(o.path), bitcode: false });
  }
  return out;
}

/** kbuild's vmlinux.o ld argv, with the natives in place of the bitcode (the layout knows how). */
export function vmlinuxOArgv(tree: KbuildTree, inputs: readonly LinkObject[]): string[] {
  return tree.layout.vmlinuxOArgv(tree, inputs);
}

/** vmlinux.o's link as ktld runs it (src/kbuild/ldscript.ts): the layout's argv, with ktld's
 * extra script when the final link's script allows it (written beside kbuild's own
 * `.tmp_initcalls.lds` when its text changed), and why. */
function vmlinuxOLink(tree: KbuildTree, inputs: readonly LinkObject[], env: Record<string, string>): { argv: string[]; reason: string } {
  const lds = env.KBUILD_LDS ?? "KBUILD_LDS";
  let text: string | undefined;
  try {
    text = env.KBUILD_LDS ? fs.readFileSync(path.join(tree.buildDir, env.KBUILD_LDS), "utf8") : undefined;
  } catch {
    text = undefined;
  }
  const plan = planVmlinuxO(text, lds);
  const argv = vmlinuxOArgv(tree, inputs);
  if (!plan.script) return { argv, reason: plan.reason };
  const file = path.join(tree.buildDir, VMLINUX_O_SCRIPT);
  let now: string | undefined;
  try {
    now = fs.readFileSync(file, "utf8");
  } catch {
    now = undefined;
  }
  if (now !== plan.script) fs.writeFileSync(file, plan.script);
  return { argv: [...argv, "-T", VMLINUX_O_SCRIPT], reason: plan.reason };
}

function readRecorded(tree: KbuildTree, target: string): CmdFile | undefined {
  const file = path.join(tree.buildDir, cmdFilePath(target));
  if (!fs.existsSync(file)) return undefined;
  return parseCmdFile(fs.readFileSync(file, "utf8"), cmdFilePath(target));
}

/** Runs a command kbuild recorded, from the build dir, as make would have (`sh -c`). */
async function replay(tree: KbuildTree, target: string, env: Record<string, string>): Promise<string | undefined> {
  const rec = readRecorded(tree, target);
  if (!rec) return undefined;
  return runStep(tree.buildDir, ["/bin/sh", "-c", rec.command], env, target);
}


/** `nm --defined-only -A` over `objects` → object → its initcall symbols, one string. */
export async function initcallSignatures(dir: string, nm: string, objects: readonly string[], env?: Record<string, string>, signal?: AbortSignal): Promise<Map<string, string>> {
  const sigs = new Map<string, string[]>(objects.map((o) => [o, []]));
  for (let i = 0; i < objects.length; i += 500) {
    const chunk = objects.slice(i, i + 500);
    const r = await runProcess([nm, "--defined-only", "-A", ...chunk], { cwd: dir, env, signal, timeoutMs: 10 * 60_000, tool: "nm (initcalls)" });
    if (r.cancelled) throw new Cancelled();
    if (r.error || r.code !== 0) throw new BuildFailure("initcall scan", r.error ?? r.output);
    for (const line of r.output.split("\n")) {
      const m = /^(.*?): .*\s(\S+)$/.exec(line);
      if (m && m[2].startsWith("__initcall__")) sigs.get(m[1])?.push(m[2]);
    }
  }
  return new Map([...sigs].map(([o, l]) => [o, l.sort().join(" ")]));
}

/** Whether the recorded initcall order still holds for the objects as they are now.
 * Pure: `sigOf` is asked only for objects whose bytes changed. */
export async function initcallsCurrent(
  rec: InitcallRecord | undefined, ldsHash: Hash | null, members: Hash,
  hashes: ReadonlyMap<string, Hash>, sigOf: (changed: string[]) => Map<string, string> | Promise<Map<string, string>>,
): Promise<boolean> {
  if (!rec || rec.lds !== ldsHash || rec.members !== members) return false;
  const changed = [...hashes].filter(([o, h]) => rec.objects[o]?.hash !== h).map(([o]) => o);
  if (!changed.length) return true;
  const sigs = await sigOf(changed);
  return changed.every((o) => rec.objects[o] !== undefined && rec.objects[o].sig === sigs.get(o));
}

/** Brings `.tmp_initcalls.lds` (the initcall order of an LTO link) up to date with the
 * objects, running kbuild's generator only when some object's initcalls changed.
 * Returns the new record. */
async function refreshInitcalls(
  tree: KbuildTree, env: Record<string, string>, hashes: ReadonlyMap<string, Hash>, rec: InitcallRecord | undefined, log: LinkLog,
  prefetched?: Promise<ReadonlyMap<string, string>>,
): Promise<InitcallRecord | undefined> {
  const file = path.join(tree.buildDir, ".tmp_initcalls.lds");
  if (!readRecorded(tree, ".tmp_initcalls.lds")) return undefined;
  const nm = env.NM ?? "llvm-nm";
  const members = hashFields([...hashes.keys()]);
  const sigOf = async (objs: string[]) => {
    // Taken beside the BE when there was no record (a first link): used if it covers these.
    const pre = await prefetched?.catch(() => undefined);
    if (pre && objs.every((o) => pre.has(o))) return new Map(objs.map((o) => [o, pre.get(o)!]));
    return initcallSignatures(tree.buildDir, nm, objs, env);
  };
  const objects = (sigs: Map<string, string>) => Object.fromEntries([...hashes].map(([o, h]) => [o, { hash: h, sig: sigs.get(o) ?? rec?.objects[o]?.sig ?? "" }]));
  if (await initcallsCurrent(rec, hashFile(file), members, hashes, sigOf)) {
    const changed = [...hashes.keys()].filter((o) => rec!.objects[o]?.hash !== hashes.get(o));
    return { ...rec!, objects: objects(changed.length ? await sigOf(changed) : new Map()) };
  }
  log("GEN", ".tmp_initcalls.lds");
  const before = fs.existsSync(file) ? { bytes: fs.readFileSync(file), st: fs.statSync(file) } : undefined;
  await replay(tree, ".tmp_initcalls.lds", env);
  // Same bytes: put the old mtime back, so make sees nothing new either.
  if (before && fs.readFileSync(file).equals(before.bytes)) fs.utimesSync(file, before.st.atime, before.st.mtime);
  return { lds: hashFile(file)!, members, objects: objects(await sigOf([...hashes.keys()])) };
}

export interface LinkLog {
  (label: string, target: string): void;
}

/** Links vmlinux.o from `inputs` and makes vmlinux with kbuild's own steps. `objectHashes`
 * are the hashes of what kbuild's initcall generator reads (the members of vmlinux.a and
 * the libraries), in link order. Returns the new initcall record. */
export async function linkVmlinux(
  tree: KbuildTree, inputs: readonly LinkObject[], env: Record<string, string>, log: LinkLog,
  objectHashes: ReadonlyMap<string, Hash>, initcalls: InitcallRecord | undefined,
  prefetched?: Promise<ReadonlyMap<string, string>>, clock = new StepClock(),
  /** The BTF step (src/btf.ts), made ready beside the steps before kbuild's final link. */
  btf?: Promise<BtfStep | { readonly skip: string }>,
  /** Where ktld keeps what the next final link starts from (the last kallsyms object);
   * without it, kbuild's make runs the final link. */
  stateDir?: string,
): Promise<{ initcalls?: InitcallRecord; btf?: BtfOutcome }> {
  const dir = tree.buildDir;
  await clock.time("archives and lists", () => tree.layout.beforeVmlinuxO(tree, inputs, env, log));
  const rec = await clock.time("initcalls", () => refreshInitcalls(tree, env, objectHashes, initcalls, log, prefetched));
  log("LD", "vmlinux.o");
  const vmlinuxO = vmlinuxOLink(tree, inputs, env);
  await clock.time("LD vmlinux.o", () => runStep(dir, vmlinuxO.argv, env, "LD vmlinux.o"));
  clock.note("LD vmlinux.o", vmlinuxO.reason);
  // The BTF step, if its inputs have been looked at by now (objtool does not wait for them),
  // and the final link as they will run: pahole may start now, ahead of objtool.
  const btfStepOf = (step: BtfStep | { readonly skip: string } | undefined) => (step && "env" in step ? step : undefined);
  const stepNow = btfStepOf(btf && await Promise.race([btf.catch(() => undefined), new Promise<undefined>((r) => setImmediate(() => r(undefined)))]));
  const plan = planFinalLink(tree, env, stateDir);
  let ahead: BtfAhead | undefined;
  let aheadWhy: string | undefined = btf && !stepNow ? "the BTF step's inputs were still being looked at when vmlinux.o was linked" : undefined;
  if (stepNow && !("make" in plan)) {
    const linkEnv = { ...env, ...stepNow.env };
    const body = parts.ahead(plan.script, AHEAD_IMAGE);
    // The script's three arguments, its linker told to read the copy of vmlinux.o before objtool.
    const [ld, ldflags, ldflagsVmlinux] = plan.args;
    const refused = refuseBtfAhead({ off: process.env.KTLD_BTF_AHEAD === "0", body, ld });
    const started = refused || body === undefined ? { why: refused ?? "no first link" }
      : await startBtfAhead({
          step: stepNow, buildDir: dir, env: linkEnv,
          link: () => clock.time("LD .tmp_vmlinux1 ahead", () => runStep(dir, ["/bin/sh", "-c", body, plan.scriptPath, ld, ldflags, `${ldflagsVmlinux} --remap-inputs=vmlinux.o=${AHEAD_INPUT}`], linkEnv, "LD .tmp_vmlinux1 ahead")),
        });
    if ("why" in started) aheadWhy = started.why;
    else ahead = started;
  }
  let btfOutcome: BtfOutcome | undefined;
  let kallsyms: KallsymsOutcome | undefined;
  try {
    if (tree.vmlinuxLink.after) {
      log("OBJTOOL", "vmlinux.o");
      await clock.time("OBJTOOL vmlinux.o", () => runStep(dir, ["/bin/sh", "-c", tree.vmlinuxLink.after], env, "objtool vmlinux.o"));
    }
    const srctree = env.srctree ?? tree.srcTree;
    const mk = (makefile: string, quiet = false) => ["make", ...(quiet ? ["quiet=quiet_", "Q=@"] : ["-s"]), "-f", path.resolve(dir, srctree, "scripts", makefile)];
    // modules.builtin* only read vmlinux.o, like modpost: they run beside the final link.
    const builtin = clock.time("GEN modules.builtin", async () => {
      for (const t of ["modules.builtin.modinfo", "modules.builtin"]) {
        if (fs.existsSync(path.join(dir, cmdFilePath(t)))) {
          log("GEN", t);
          await replay(tree, t, env);
        }
      }
    });
    log("MODPOST", "vmlinux.symvers");
    const final = (async () => {
      await clock.time("MODPOST vmlinux.symvers", () => runStep(dir, mk("Makefile.modpost"), env, "modpost"));
      const step = await btf?.catch((e: unknown) => ({ skip: `ktld could not look at the BTF's inputs: ${(e as Error).message}` }));
      const btfStep = btfStepOf(step);
      const linkEnv = btfStep ? { ...env, ...btfStep.env } : env;
      log("LD", "vmlinux");
      try {
        if ("make" in plan) {
          // kbuild's own final steps, followed by the lines they print (link-vmlinux.sh's links,
          // BTF, kallsyms, sorting): each is a step of the link, timed until the next.
          const making = runStep(dir, mk("Makefile.vmlinux", true), linkEnv, "LD vmlinux", undefined, undefined, clock.follow);
          // make has started (its lines come later): the step lasts from here.
          clock.mark("make -f Makefile.vmlinux");
          await making;
          kallsyms = { fromLast: false, reason: `kbuild's make ran the final link: ${plan.make}` };
        } else {
          const beforeBtf = ahead ? async () => {
            const settled = await ahead!.settle();
            if (!settled.added) aheadWhy = settled.why;
          } : undefined;
          // The image ahead reads the objects the script makes again: its link comes first.
          kallsyms = await runFinalLink({ tree, env: linkEnv, clock, plan, make: (t) => [...mk("Makefile.vmlinux", true), t], beforeStart: ahead?.linked, beforeBtf });
        }
      } finally {
        clock.endMark();
        btfOutcome = btfStep?.outcome();
        const btfName = clock.steps.find((s) => s.name.startsWith("BTF "))?.name;
        const notAhead = aheadWhy && btfStep?.paholeRuns && !btfOutcome?.ahead ? `; pahole did not run ahead of objtool: ${aheadWhy}` : "";
        const reason = btfOutcome ? `${btfOutcome.reused ? "reused" : btfOutcome.ahead ? "pahole ran ahead" : "pahole ran"}: ${btfOutcome.reason}${notAhead}` : step && "skip" in step ? `pahole ran: ${step.skip}` : undefined;
        if (btfName && reason) clock.note(btfName, reason);
        if (kallsyms) clock.steps.push({ name: "kallsyms", ms: 0, reason: kallsyms.reason });
      }
    })();
    await Promise.all([builtin, final]);
  } finally {
    await ahead?.abandon();
  }
  return { initcalls: rec, btf: btfOutcome };
}
