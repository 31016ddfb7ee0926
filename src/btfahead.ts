// pahole run ahead of objtool.
//
// When no kept .BTF is for a link's objects (src/btf.ts), kbuild's pahole runs on
// `.tmp_vmlinux1` (7-8 s on the developer fixture: LTO's DWARF makes pahole 1.24 merge every
// unit into one), and kbuild starts it only after objtool on vmlinux.o, the modpost step and
// the first link. ktld copies vmlinux.o before objtool runs on it, and while objtool and the
// rest go on it links an image from that copy as the script links `.tmp_vmlinux1` (its own
// vmlinux_link, the linker told to read the copy for vmlinux.o: `--remap-inputs`), beside the
// last link's `.vmlinux.export.o` and version object, and runs kbuild's pahole on that image.
// What it makes is one more BTF record, for this link only:
//
// - its units: vmlinux.o's objects, and the two objects linked beside it as they were when
//   the image was linked, each with its superset BTF;
// - its symbol key leaves out the function names that begin with objtool's prefix
//   (`__pfx_<function>`: objtool adds them to vmlinux.o, so `.tmp_vmlinux1` has them and the
//   image ahead has not). pahole 1.24 asks of function symbols only whether a DWARF function's
//   name is one of them, and the image's DWARF (checked, every debug section) holds no name
//   that begins with the prefix: those names cannot change an answer.
//
// At the BTF step the shim picks this record only as it picks any (planBtf): the same pahole
// and arguments, each object as the record has it (bytes, or superset BTF), and
// `.tmp_vmlinux1`'s symbol key with the prefix left out equal to the image's. Else pahole runs
// as kbuild runs it. The image is linked with debug info; `.tmp_vmlinux1` then goes without.
import * as fs from "node:fs";
import * as path from "node:path";
import { runProcess } from "./base/process";
import { hashBytes, hashFile } from "./base/hash";
import { BtfInput, BtfRecord, BtfStep, btfSymbolsKey, knownSbtf, OBJTOOL_PREFIX, paholeKey, supersetBtf } from "./btf";
import { elfSection, elfSectionsContain } from "./elf";
import { TEMP_SUFFIX } from "./kbuild/names";

/** The image ahead, and the copy of vmlinux.o before objtool it is linked from, in the build
 * dir beside the script's own temp files; ktld's temp suffix, so that a ktld that died leaves
 * them to the next one's sweep. */
export const AHEAD_IMAGE = `.tmp_vmlinux1.ahead${TEMP_SUFFIX}`;
export const AHEAD_INPUT = `.tmp_vmlinux.o.ahead${TEMP_SUFFIX}`;

/** pahole running ahead: `settle` ends it (added record, or why not). */
export interface BtfAhead {
  /** Resolves once the image is linked (or its link failed): the files it reads (vmlinux.o
   * aside, which it reads from its copy) may be made again from then on. */
  linked(): Promise<void>;
  /** Waits for pahole ahead; the record is in the shim's plan, or the reason it is not. */
  settle(): Promise<{ readonly added: true } | { readonly added: false; readonly why: string }>;
  /** Ends pahole ahead if it still runs (the link failed or was cancelled) and cleans up. */
  abandon(): Promise<void>;
}

/** Why pahole does not run ahead of objtool for a link whose final link runs the script's
 * parts (undefined: it may): switched off, the script's first link not one line ktld can run
 * on its own (`body`, src/kbuild/linkscript.ts), or a linker that cannot be told to read the
 * copy of vmlinux.o in its place (`ld`, the script's first argument). Pure. */
export function refuseBtfAhead(opts: { off: boolean; body: string | undefined; ld: string }): string | undefined {
  if (opts.off) return "off (KTLD_BTF_AHEAD=0)";
  if (opts.body === undefined) return "the script's first link is not one `vmlinux_link .tmp_vmlinux1` line";
  if (!/\bld\.lld\b/.test(opts.ld)) return `its linker (${opts.ld}) is not ld.lld, which can read a copy of vmlinux.o in its place`;
  return undefined;
}

/** Copies vmlinux.o as it is now (before objtool), then in the background links the image
 * from that copy (`link`: the script's vmlinux_link, its linker told to read the copy for
 * vmlinux.o) and runs pahole on it. A reason instead when ktld does not run pahole ahead. */
export async function startBtfAhead(opts: {
  step: BtfStep; buildDir: string; env: Record<string, string>;
  /** Links AHEAD_IMAGE in the build dir, from AHEAD_INPUT for vmlinux.o; throws when the link fails. */
  link: () => Promise<unknown>;
  signal?: AbortSignal;
}): Promise<BtfAhead | { readonly why: string }> {
  const { step, buildDir } = opts;
  const plan = step.plan;
  if (!step.paholeRuns) return { why: "a kept .BTF is likely put back" };
  const image = path.join(buildDir, AHEAD_IMAGE);
  const input = path.join(buildDir, AHEAD_INPUT);
  const copies = new Map<string, string>();
  const cleanup = () => {
    for (const f of [input, image, `${image}.map`, ...copies.values()]) fs.rmSync(f, { force: true });
  };
  try {
    await fs.promises.copyFile(path.join(buildDir, "vmlinux.o"), input);
  } catch (e) {
    cleanup();
    return { why: `vmlinux.o could not be copied: ${(e as Error).message}` };
  }
  const abort = new AbortController();
  const onAbort = () => abort.abort();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  const flags = (opts.env.PAHOLE_FLAGS ?? "").split(/\s+/).filter(Boolean);
  const env = { ...opts.env, LLVM_OBJCOPY: opts.env.OBJCOPY || "llvm-objcopy" };
  let onLinked = () => {};
  const linked = new Promise<void>((resolve) => (onLinked = resolve));
  const run = (async (): Promise<BtfRecord | string> => {
    const extras: BtfInput[] = [];
    try {
      try {
        await opts.link();
      } catch (e) {
        return `its link failed: ${(e as Error).message.split("\n")[0]}`;
      } finally {
        fs.rmSync(input, { force: true });
      }
      // The objects beside vmlinux.o as the image has them (those there are, as the shim
      // looks at them), copied before the script makes them again: their superset BTF must
      // be of these bytes.
      fs.mkdirSync(plan.btfDir, { recursive: true });
      for (const [i, rel] of plan.extra.entries()) {
        if (!fs.existsSync(path.join(buildDir, rel))) continue;
        const copy = path.join(plan.btfDir, `ahead-${i}.o`);
        copies.set(rel, copy);
        fs.copyFileSync(path.join(buildDir, rel), copy);
        extras.push({ path: rel, hash: hashFile(copy) ?? "<missing>" });
      }
    } finally {
      onLinked();
    }
    if (abort.signal.aborted) return "cancelled";
    const paholeRun = runProcess([plan.real, "-J", ...flags, AHEAD_IMAGE], { cwd: buildDir, env, signal: abort.signal, timeoutMs: 30 * 60_000, tool: "pahole ahead" });
    // Read while pahole runs (it rewrites the file in place only at its end).
    const named = (() => {
      try {
        return elfSectionsContain(image, ".debug_", OBJTOOL_PREFIX);
      } catch (e) {
        return (e as Error).message;
      }
    })();
    if (named !== false) {
      abort.abort();
      await paholeRun;
      return named === true ? `a debug section of the image has a name that begins with ${OBJTOOL_PREFIX}` : `its debug sections could not be read: ${named}`;
    }
    const r = await paholeRun;
    if (r.cancelled) return "cancelled";
    if (r.code !== 0 || r.error) return `pahole failed on the image: ${(r.error ?? r.output).trim().split("\n").slice(-1)[0]}`;
    const bytes = elfSection(image, ".BTF");
    if (!bytes?.length) return "pahole left no .BTF in the image";
    const known = knownSbtf(plan.records);
    const tools = { ...plan.tools, objcopy: env.LLVM_OBJCOPY, flags };
    const beside: BtfInput[] = [];
    for (const x of extras) {
      const sbtf = known.get(x.hash) ?? await supersetBtf(copies.get(x.path)!, tools, plan.btfDir, abort.signal).catch(() => undefined);
      beside.push({ ...x, ...(sbtf ? { sbtf } : {}) });
    }
    const btf = hashBytes(bytes);
    const tmp = path.join(plan.btfDir, `${btf}.tmp-${process.pid}`);
    fs.writeFileSync(tmp, bytes);
    fs.renameSync(tmp, path.join(plan.btfDir, btf));
    return {
      pahole: paholeKey(plan.tools.pahole, flags), inputs: [...plan.inputs, ...beside],
      symbols: btfSymbolsKey(image, OBJTOOL_PREFIX), btf, leaveOut: OBJTOOL_PREFIX,
    };
  })().catch((e: unknown) => `it failed: ${(e as Error).message}`).finally(() => {
    opts.signal?.removeEventListener("abort", onAbort);
    cleanup();
  });
  step.stripFirstLink();
  return {
    linked: () => linked,
    settle: async () => {
      const got = await run;
      if (typeof got === "string") return { added: false, why: got };
      step.addRecord(got);
      return { added: true };
    },
    abandon: async () => {
      abort.abort();
      await run;
    },
  };
}
