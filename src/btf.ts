// vmlinux's BTF, reused when it is provably what pahole would make again.
//
// kbuild's link-vmlinux.sh runs `pahole -J $PAHOLE_FLAGS .tmp_vmlinux1` (13 of the 17 s of
// the developer fixture's final link), which encodes the DWARF of every unit into a .BTF
// section. ktld passes its own PAHOLE (src/btfshim.ts), which puts the last .BTF back in
// place of the encoding when all of what pahole 1.24's encoder reads is as it was:
//
// - the units, in link order: each object linked into vmlinux whose bytes changed has the
//   same "superset BTF" as before: pahole's own encoding of that object alone, with a symbol
//   added for every function its DWARF has (pfunct's list), so that every function and
//   prototype of the unit is in it, not only those the object's own symbols name. (The
//   encoder of vmlinux encodes a DWARF function when vmlinux has a function symbol of its
//   name and no earlier unit claimed the name; with every unit's functions, types and
//   per-CPU variables as they were, and the symbols below as they were, it makes the same
//   encoding.)
// - vmlinux's symbols as the encoder reads them: the set of function names (those a C
//   function can have: a name with a dot is never a DWARF function's), and each
//   per-CPU variable's offset, size and name in `.data..percpu`, with that section's size;
// - pahole's version (1.24, whose encoder this was read from) and its arguments.
//
// An object whose superset BTF differs only in simple types (a print's string is a new
// `char[N]`) that unchanged objects before it have counts as unchanged: src/btftypes.ts says
// why, showSameUpToSimpleTypes finds those objects, planBtf checks them against the record.
//
// Anything else, or anything ktld cannot tell, and pahole runs as kbuild runs it.
import * as fs from "node:fs";
import * as path from "node:path";
import { runProcess } from "./base/process";
import { Hash, hashBytes, hashFields, isBitcode, readHead } from "./base/hash";
import { elfHasSection, elfSymbols, STT_FUNC, STT_OBJECT } from "./elf";
import { which } from "./toolchain";
import { quote } from "./base/shell";
import { eachLimited } from "./base/limit";
import type { StepPlan } from "./steps";
import { BtfType, NOT_SIMPLE, parseBtf, sameUpToEarlierSimpleTypes, simpleClasses, typesBeforeFunctions } from "./btftypes";
import type { BtfInput, BtfRecord } from "./store";

export type { BtfInput, BtfRecord };

/** The pahole whose encoder the rules above were read from. */
export const KNOWN_PAHOLE = "v1.24";

/** objtool's prefix symbols (`--prefix`: `__pfx_<function>`, 16 bytes before each function),
 * which vmlinux.o has after objtool and not before. */
export const OBJTOOL_PREFIX = "__pfx_";

/** What pahole 1.24's encoder reads of an image's symbol table: the names of its functions,
 * and its per-CPU variables (offset in `.data..percpu`, size, name) with that section's size.
 * The encoder asks of the function names only whether a DWARF function's name is one of them
 * (btf_encoder__find_function); `leaveOut`: names that begin with it are left out, for an
 * image whose DWARF has no name that does (src/btfahead.ts). */
export function btfSymbolsKey(file: string, leaveOut?: string): Hash {
  const { symbols, sections } = elfSymbols(file);
  const pcpu = sections.findIndex((s, i) => i > 0 && s.name === ".data..percpu");
  // An extended section index (SHN_XINDEX) would need .symtab_shndx: not read here.
  if (symbols.some((s) => s.shndx === 0xffff)) return hashFields(["unreadable", file, String(Date.now())]);
  // A name with a dot (`foo.llvm.1234`, ThinLTO's promoted locals, renamed whenever their
  // unit's bitcode changes) is no C identifier: no DWARF function has it, so pahole never
  // matches it, and it is left out.
  const funcs = [...new Set(symbols.filter((s) => s.type === STT_FUNC && !s.name.includes(".") && !(leaveOut && s.name.startsWith(leaveOut))).map((s) => s.name))].sort();
  const vars = pcpu > 0
    ? symbols.filter((s) => s.shndx === pcpu && s.type === STT_OBJECT && s.size > 0n).map((s) => `${s.value - sections[pcpu].addr} ${s.size} ${s.name}`).sort()
    : [];
  return hashFields(["functions", ...(leaveOut ? [`leaving out ${leaveOut}`] : []), ...funcs, "percpu", pcpu > 0 ? String(sections[pcpu].size) : "none", ...vars]);
}

/** The tools a superset BTF needs. */
export interface BtfTools {
  readonly pahole: string;
  readonly pfunct: string;
  readonly objcopy: string;
  /** pahole's arguments as kbuild gives them (PAHOLE_FLAGS), `-j` left out here. */
  readonly flags: readonly string[];
}

/** pahole's arguments without `-j`: one object is encoded by one thread. */
function oneThread(flags: readonly string[]): string[] {
  return flags.filter((f) => f !== "-j" && !/^(-j\d+|--jobs(=.*)?)$/.test(f));
}

/** pahole's detached encoding of `obj` (a temp file in `tmpDir`, removed after): its bytes,
 * or undefined when pahole wrote none (DWARF without a type: an assembler file's). Throws
 * when pahole fails. */
async function paholeEncoding(obj: string, tools: BtfTools, tmpDir: string, signal: AbortSignal | undefined, base: string): Promise<Buffer | undefined> {
  const out = `${base}.btf`;
  try {
    const enc = await runProcess([tools.pahole, "-J", ...oneThread(tools.flags), `--btf_encode_detached=${out}`, obj], { cwd: tmpDir, timeoutMs: 300_000, tool: "pahole", signal });
    if (enc.code !== 0) throw new Error(`pahole ${obj}: ${enc.error ?? enc.output.slice(-500)}`);
    return fs.existsSync(out) ? fs.readFileSync(out) : undefined;
  } finally {
    fs.rmSync(out, { force: true });
  }
}

/** A temp file's name in `tmpDir` for `file`, one per call. */
function tempBase(tmpDir: string, file: string): string {
  fs.mkdirSync(tmpDir, { recursive: true });
  return path.join(tmpDir, `${path.basename(file)}.${process.pid}.${Math.random().toString(36).slice(2)}`);
}

/** A superset BTF: its hash, and its types where it was read here (src/btftypes.ts). */
export interface Superset {
  readonly hash: Hash;
  readonly types?: BtfType[];
}

/** pahole's encoding of `file` alone, with a function symbol for each function its DWARF has
 * (see the top): its hash, or "none" for an object without DWARF. Throws when a tool fails. */
export async function supersetBtf(file: string, tools: BtfTools, tmpDir: string, signal?: AbortSignal, keepAs?: string): Promise<Hash> {
  return (await encodeSuperset(file, tools, tmpDir, signal, keepAs)).hash;
}

/** supersetBtf, with the types it parsed (for the look at simple types, which needs them). */
export async function encodeSuperset(file: string, tools: BtfTools, tmpDir: string, signal?: AbortSignal, keepAs?: string): Promise<Superset> {
  if (isBitcode(readHead(file))) return { hash: await bitcodeSupersetBtf(file, tools, tmpDir, signal) };
  if (!elfHasSection(file, ".debug_info")) return { hash: "none" };
  fs.mkdirSync(tmpDir, { recursive: true });
  const listed = await runProcess([tools.pfunct, file], { cwd: tmpDir, timeoutMs: 120_000, tool: "pfunct", signal });
  if (listed.code !== 0) throw new Error(`pfunct ${file}: ${listed.error ?? listed.output.slice(-500)}`);
  const have = new Set(elfSymbols(file).symbols.filter((s) => s.type === STT_FUNC).map((s) => s.name));
  const missing = [...new Set(listed.stdout.split("\n").map((l) => l.trim()).filter((n) => /^[A-Za-z_.$][\w.$]*$/.test(n) && !have.has(n)))].sort();
  const base = tempBase(tmpDir, file);
  try {
    let obj = file;
    if (missing.length) {
      fs.writeFileSync(`${base}.rsp`, missing.map((n) => `--add-symbol=${n}=0,function,global\n`).join(""));
      const added = await runProcess([tools.objcopy, `@${base}.rsp`, file, `${base}.o`], { cwd: tmpDir, timeoutMs: 120_000, tool: "objcopy", signal });
      if (added.code !== 0) throw new Error(`${tools.objcopy} ${file}: ${added.error ?? added.output.slice(-500)}`);
      obj = `${base}.o`;
    }
    const bytes = await paholeEncoding(obj, tools, tmpDir, signal, base);
    if (!bytes) throw new Error(`pahole ${file}: no encoding written`);
    // vmlinux's encoding is one merged unit: every object's types, then the functions. An
    // object whose compile units pahole encodes one by one (none refers to another) puts each
    // unit's functions before the next unit's types: equal encodings of it would not show an
    // equal vmlinux encoding, so it is not compared.
    const types = parseBtf(bytes);
    if (!typesBeforeFunctions(types)) throw new Error(`${file}: pahole encodes its compile units one by one, functions between their types`);
    if (keepAs) {
      fs.mkdirSync(path.dirname(keepAs), { recursive: true });
      fs.writeFileSync(`${keepAs}.tmp-${process.pid}`, bytes);
      fs.renameSync(`${keepAs}.tmp-${process.pid}`, keepAs);
    }
    return { hash: hashBytes(bytes), types };
  } finally {
    for (const ext of [".rsp", ".o"]) fs.rmSync(`${base}${ext}`, { force: true });
  }
}

/** The classes of the simple types of `file` (src/btftypes.ts): pahole's encoding of it as it
 * is (a unit's types are all encoded, whatever its symbols), none for an object without
 * DWARF. Throws when pahole fails or its encoding cannot be read. */
export async function simpleClassesOfObject(file: string, tools: BtfTools, tmpDir: string, signal?: AbortSignal): Promise<Set<string>> {
  if (!elfHasSection(file, ".debug_info")) return new Set();
  const bytes = await paholeEncoding(file, tools, tmpDir, signal, tempBase(tmpDir, file));
  return bytes ? simpleClasses(parseBtf(bytes)) : new Set();
}

/** Debug metadata of functions: a bitcode unit with any is not read here (below). */
const FUNCTION_NODES = /^(DISubprogram|DILabel|DILocalVariable|DILexicalBlock\w*|DILocation|DIImportedEntity|DIMacro\w*)$/;

/** The superset BTF of an LLVM bitcode unit linked beside vmlinux.o: link-vmlinux.sh's
 * `.vmlinux.export.o` and `init/version-timestamp.o` are compiled with the LTO flags, and
 * ld.lld's own LTO makes their code and DWARF in each link. pahole cannot read bitcode, and
 * ktld does not compile it. A unit's DWARF is made from its debug metadata (read with
 * `llvm-dis`, the tree's LLVM): for a unit with no function in it (no DISubprogram, nor any
 * node of a function's body), its compile units, types and global variables, which the
 * metadata says whole. Its superset BTF is the hash of that metadata, every `!` line as
 * llvm-dis prints it, but the MD5 sums of its files (DWARF 5 puts them in .debug_line, which
 * pahole does not read for BTF). So `.vmlinux.export.o` (a compile unit and its file: its
 * exports and CRCs are inline asm) is the same after an export is added or a CRC moves, and
 * `init/version-timestamp.o` (the banner and `init_uts_ns`) is the same after a link that
 * writes another build number or time into `UTS_VERSION` of the same length (without
 * KBUILD_BUILD_TIMESTAMP, every link does); a banner of another length is another `char[N]`.
 * A unit with a function throws: pahole must read the DWARF the link makes of it. */
async function bitcodeSupersetBtf(file: string, tools: BtfTools, tmpDir: string, signal?: AbortSignal): Promise<Hash> {
  const dis = llvmToolBeside(tools.objcopy, "llvm-dis");
  if (!dis) throw new Error(`${file} is LLVM bitcode, and ${tools.objcopy} is not llvm-objcopy (ktld reads bitcode with the llvm-dis beside it)`);
  fs.mkdirSync(tmpDir, { recursive: true });
  const r = await runProcess([dis, "-o", "-", file], { cwd: tmpDir, timeoutMs: 120_000, tool: "llvm-dis", signal });
  if (r.code !== 0) throw new Error(`${dis} ${file}: ${r.error ?? r.output.slice(-500)}`);
  const lines = r.stdout.split("\n").filter((l) => l.startsWith("!"));
  if (!lines.some((l) => l.startsWith("!llvm.dbg.cu = "))) return hashFields(["bitcode without debug info"]);
  for (const l of lines) {
    for (const m of l.matchAll(/!(DI\w+)\(/g)) {
      if (FUNCTION_NODES.test(m[1])) throw new Error(`${file}: its debug metadata has a ${m[1]}: the DWARF of a function is the link's to make, and pahole's to read`);
    }
  }
  return hashFields(["bitcode: debug metadata without functions", ...lines.map((l) => l.replace(/, checksumkind: \w+, checksum: "[0-9a-fA-F]*"/g, ""))]);
}

/** The LLVM tool `name` beside `objcopy` (`llvm-objcopy-19` → `llvm-dis-19`, in its directory
 * if it names one); undefined when `objcopy` is not llvm-objcopy. Pure. */
export function llvmToolBeside(objcopy: string, name: string): string | undefined {
  const m = /^(.*\/)?llvm-objcopy(-\d+)?$/.exec(objcopy);
  return m ? `${m[1] ?? ""}${name}${m[2] ?? ""}` : undefined;
}

/** The objects now, with the superset BTF of each that differs from a record's (undefined
 * where it could not be had). */
export interface BtfNow {
  readonly pahole: string;
  readonly inputs: readonly BtfInput[];
  readonly symbols: Hash;
  /** btfSymbolsKey leaving out OBJTOOL_PREFIX, for a record of pahole run ahead. */
  readonly symbolsLeavingOut?: Hash;
}

/** How many earlier .BTF are kept: a debug print added and taken out again finds the one
 * from before it. */
export const BTF_KEPT = 4;

/** Reuse the last BTF, or run pahole; and why. Pure. */
export function planBtf(last: BtfRecord | undefined, now: BtfNow): StepPlan {
  if (!last) return { run: true, reason: "no BTF on record" };
  if (last.pahole !== now.pahole) return { run: true, reason: "pahole or its arguments changed" };
  if (last.inputs.length !== now.inputs.length || last.inputs.some((l, i) => l.path !== now.inputs[i].path)) {
    return { run: true, reason: "the objects linked into vmlinux changed (added, removed or reordered)" };
  }
  let changed = 0;
  const simple: string[] = [];
  for (const [i, n] of now.inputs.entries()) {
    const l = last.inputs[i];
    if (l.hash === n.hash) continue;
    changed++;
    const before = l.sbtf;
    if (before === undefined) return { run: true, reason: `no record of the types and functions of ${n.path} as it was` };
    if (n.sbtf === undefined) return { run: true, reason: `the types and functions of ${n.path} could not be read` };
    if (before === n.sbtf) continue;
    // Shown the same but for simple types the objects before it have, those objects being
    // the same in the record and now (src/btftypes.ts).
    const same = n.sameTypes?.find((s) => s.was === l.hash && s.witnesses.every((w) => w.index < i && last.inputs[w.index]?.hash === w.hash && now.inputs[w.index]?.hash === w.hash));
    if (!same) return { run: true, reason: `the types or functions of ${n.path} changed${n.whyNotSame ? ` (${n.whyNotSame})` : ""}` };
    simple.push(`${n.path} (${same.witnesses.map((w) => now.inputs[w.index].path).join(", ")})`);
  }
  if (last.leaveOut !== undefined) {
    if (last.leaveOut !== OBJTOOL_PREFIX || last.symbols !== now.symbolsLeavingOut) return { run: true, reason: `the image it ran on has other function or per-CPU symbols than this one (objtool's ${OBJTOOL_PREFIX} ones left out)` };
    return { run: false, reason: `its image, linked from vmlinux.o before objtool, has these objects, and this image's function and per-CPU symbols but objtool's ${OBJTOOL_PREFIX} ones (no DWARF name begins with ${OBJTOOL_PREFIX})` };
  }
  if (last.symbols !== now.symbols) return { run: true, reason: "the symbols pahole reads changed (a function or per-CPU variable added, removed or moved)" };
  const upTo = simple.length ? ` (up to simple types that objects before them have: ${simple.join("; ")})` : "";
  return { run: false, reason: `${changed} changed object(s) have the types and functions they had${upTo}, and vmlinux's function and per-CPU symbols are as they were` };
}

/** What ktld hands its PAHOLE (src/btfshim.ts) for one link. */
export interface BtfPlanFile {
  /** The pahole kbuild would run. */
  readonly real: string;
  readonly tools: Omit<BtfTools, "flags" | "objcopy">;
  /** The kept records, newest first, each with the superset BTF of the objects that differ
   * from now's filled in where ktld could have it. */
  readonly records: readonly BtfRecord[];
  /** vmlinux.o's objects, with the superset BTF of each that differs from a record's. */
  readonly inputs: readonly BtfInput[];
  /** Objects link-vmlinux.sh links beside vmlinux.o (`.vmlinux.export.o`, `init/version-timestamp.o`),
   * relative to the build dir: the shim looks at them itself. */
  readonly extra: readonly string[];
  readonly buildDir: string;
  /** Where the .BTF bytes are kept (`<hash>` files), and temp files made. */
  readonly btfDir: string;
  /** Where the shim says what it did (BtfOutcome). */
  readonly result: string;
  /** When ktld's LD may link `.tmp_vmlinux1` without debug info (when `strip` exists: a kept
   * .BTF is likely put back, predictReuse, or pahole ran ahead): the real linker and the file
   * where ktld's LD left that link's arguments, for a link with it if pahole must run. */
  readonly firstLink?: { readonly real: string; readonly args: string; readonly strip: string };
}

/** What the shim did. */
export interface BtfOutcome {
  readonly reused: boolean;
  /** The .BTF is pahole's, run ahead of objtool for this link (src/btfahead.ts). */
  readonly ahead?: boolean;
  readonly reason: string;
  /** The records for the next link, newest (this link's) first; absent when pahole failed. */
  readonly records?: readonly BtfRecord[];
}

/** The kept records as the store has them (a store of before kept one record, not a list). */
export function btfRecords(stored: unknown): readonly BtfRecord[] {
  return Array.isArray(stored) ? (stored as BtfRecord[]).filter((r) => r && typeof r.btf === "string" && Array.isArray(r.inputs)) : [];
}

/** The first record whose .BTF can be reused now, with its index; else the newest record's
 * reason to run pahole. Pure. */
export function pickBtf(records: readonly BtfRecord[], now: BtfNow): { index: number; reason: string } | { index: -1; reason: string } {
  let first: string | undefined;
  for (const [index, r] of records.entries()) {
    const plan = planBtf(r, now);
    if (!plan.run) return { index, reason: index === 0 ? plan.reason : `${plan.reason} (the .BTF of an earlier link, ${index} back)` };
    first ??= plan.reason;
  }
  return { index: -1, reason: first ?? planBtf(undefined, now).reason };
}

/** The superset BTF the records know, by the hash of the object's bytes. Pure. */
export function knownSbtf(records: readonly BtfRecord[]): Map<Hash, Hash> {
  const known = new Map<Hash, Hash>();
  for (const r of records) for (const i of r.inputs) if (i.sbtf) known.set(i.hash, i.sbtf);
  return known;
}

/** What a record says of the pahole that made it: the program and its arguments (PAHOLE_FLAGS). */
export function paholeKey(pahole: string, flags: readonly string[]): string {
  return `${pahole} ${flags.join(" ")}`;
}

/** Whether a kept .BTF will be put back unless vmlinux's symbols moved: every object of
 * vmlinux.o is as one record has it (bytes, or types and functions), with the same pahole.
 * The objects linked beside vmlinux.o and the symbols are looked at only by the shim, after
 * the first link: here they are taken as the record has them. Pure. */
export function predictReuse(records: readonly BtfRecord[], inputs: readonly BtfInput[], pahole: string): boolean {
  return records.some((r) => !planBtf(r, { pahole, inputs: [...inputs, ...r.inputs.slice(inputs.length)], symbols: r.symbols }).run);
}

/** The LD that link-vmlinux.sh finds on PATH (kbuild's `$(LD)` names it without a directory,
 * and its command line stays as kbuild recorded it): `.tmp_vmlinux1`, linked with debug
 * info only for pahole to read, is linked without it (`--strip-debug`, as the script links
 * its kallsyms images) when the file `strip` exists, and its arguments kept in `args`; every
 * other link is the real one's.
 * The symbols, sections and addresses of that image are the same either way. */
export function firstLinkShim(real: string, args: string, strip: string): string {
  return [
    "#!/bin/sh",
    "# ktld's LD for link-vmlinux.sh (src/btf.ts, firstLinkShim).",
    "prev=; first=",
    "for a; do [ \"$prev\" = -o ] && [ \"$a\" = .tmp_vmlinux1 ] && first=1; prev=$a; done",
    // Without its arguments kept the image could not be linked again: then it keeps its debug info.
    `if [ -n "$first" ] && [ -e ${quote(strip)} ] && printf '%s\\n' "$@" > ${quote(args)}; then exec ${quote(real)} --strip-debug "$@"; fi`,
    `exec ${quote(real)} "$@"`,
    "",
  ].join("\n");
}

/** Where the superset BTF of an object (by the hash of its bytes) is kept, for
 * showSameUpToSimpleTypes. */
function encodingFile(dir: string, objectHash: Hash): string {
  return path.join(dir, "encodings", `${objectHash}.btf`);
}

/** How many objects' simple types one link may read (pahole on each: about 20 ms) when it
 * looks for the earlier objects that have a changed object's; those read are kept. */
export const EARLIER_READ_BUDGET = 96;

/** For each changed object whose superset BTF differs from a record's, whether it differs
 * only in simple types that the objects before it (the same in the record and now) have:
 * if so, the planner takes it as unchanged (src/btftypes.ts), and the object says which
 * earlier objects showed it; if not, why. The encodings are kept by the object's hash
 * (`encodings/`), the earlier objects' classes too (`classes/`); what no record or object
 * now names is removed. Fills `inputs` in place. */
async function showSameUpToSimpleTypes(opts: {
  dir: string; tools: BtfTools; buildDir: string; records: readonly BtfRecord[]; inputs: BtfInput[];
  blobOf: (hash: Hash) => string | undefined;
  /** Encodings made and parsed by this link, by the object's hash. */
  parsed?: ReadonlyMap<Hash, Superset>; signal?: AbortSignal;
}): Promise<void> {
  const { dir, tools, inputs } = opts;
  const classesDir = path.join(dir, "classes");
  const classMemo = new Map<Hash, Promise<ReadonlySet<string> | undefined>>();
  let budget = EARLIER_READ_BUDGET;
  const classesOf = (i: BtfInput): Promise<ReadonlySet<string> | undefined> => {
    let p = classMemo.get(i.hash);
    if (!p) {
      const file = path.join(classesDir, `${i.hash}.json`);
      p = (async () => {
        // Kept with the hash of its lines: a damaged file is read again, never taken.
        try {
          const kept = JSON.parse(fs.readFileSync(file, "utf8")) as { sum?: unknown; classes?: unknown };
          const list = kept.classes;
          if (Array.isArray(list) && list.every((c) => typeof c === "string") && kept.sum === hashFields(list as string[])) return new Set(list as string[]);
        } catch { /* not kept, or damaged: read again */ }
        if (budget <= 0) return undefined;
        budget--;
        const classes = await simpleClassesOfObject(path.join(opts.buildDir, i.path), tools, dir, opts.signal).catch(() => undefined);
        if (classes) {
          try {
            fs.mkdirSync(classesDir, { recursive: true });
            const list = [...classes];
            fs.writeFileSync(`${file}.tmp-${process.pid}`, JSON.stringify({ sum: hashFields(list), classes: list }));
            fs.renameSync(`${file}.tmp-${process.pid}`, file);
          } catch { /* not kept: read again next time */ }
        }
        return classes;
      })();
      classMemo.set(i.hash, p);
    }
    return p;
  };
  // The encoding of an object by its hash, as kept, if it is the one whose hash is `sbtf`;
  // else made again from `file` (the object's bytes) when there is one. Read once.
  const encodings = new Map<Hash, Promise<BtfType[] | undefined>>();
  const encoding = (hash: Hash, sbtf: Hash, file: string | undefined) => {
    let p = encodings.get(`${hash} ${sbtf}`);
    if (!p) {
      const kept = encodingFile(dir, hash);
      const read = () => {
        try {
          const bytes = fs.readFileSync(kept);
          return hashBytes(bytes) === sbtf ? parseBtf(bytes) : undefined;
        } catch {
          return undefined;
        }
      };
      p = (async () => {
        const ready = opts.parsed?.get(hash);
        if (ready?.types && ready.hash === sbtf) return ready.types;
        const have = read();
        if (have || !file) return have;
        const made = await encodeSuperset(file, tools, dir, opts.signal, kept).catch(() => undefined);
        return made?.hash === sbtf ? made.types : undefined;
      })();
      encodings.set(`${hash} ${sbtf}`, p);
    }
    return p;
  };
  // The classes of a record's .BTF (kept as `<dir>/<hash>`), read once.
  const btfClasses = new Map<Hash, ReadonlySet<string> | undefined>();
  const lastBtfClasses = (btf: Hash) => {
    if (!btfClasses.has(btf)) {
      let classes: ReadonlySet<string> | undefined;
      try {
        const bytes = fs.readFileSync(path.join(dir, btf));
        if (hashBytes(bytes) === btf) classes = simpleClasses(parseBtf(bytes));
      } catch { /* not kept, or unreadable: not used */ }
      btfClasses.set(btf, classes);
    }
    return btfClasses.get(btf);
  };
  // Two states that differ in more than simple types do so for every record.
  const notSimple = new Map<string, string>();
  for (const r of opts.records) {
    if (r.inputs.length < inputs.length || !inputs.every((i, k) => r.inputs[k].path === i.path)) continue;
    const differ = inputs.flatMap((now, k) => (r.inputs[k].hash !== now.hash && !(now.sbtf !== undefined && r.inputs[k].sbtf === now.sbtf) ? [k] : []));
    // The planner refuses this record anyway.
    if (!differ.length || differ.some((k) => !r.inputs[k].sbtf || !inputs[k].sbtf)) continue;
    let whole = true;
    for (const k of differ) {
      const was = r.inputs[k];
      const now = inputs[k];
      const pair = `${was.hash} ${now.hash}`;
      const known = notSimple.get(pair);
      let shown: Awaited<ReturnType<typeof sameUpToEarlierSimpleTypes>> | undefined = known ? { same: false, reason: known } : undefined;
      if (!shown) {
        const [before, after] = [await encoding(was.hash, was.sbtf!, opts.blobOf(was.hash)), await encoding(now.hash, now.sbtf!, path.join(opts.buildDir, now.path))];
        if (!before || !after) {
          inputs[k] = { ...inputs[k], whyNotSame: "its encoding as it was is not kept" };
          whole = false;
          break;
        }
        // The objects before it that are the same in the record and now, nearest the start first.
        const same: number[] = [];
        for (let j = 0; j < k; j++) if (r.inputs[j].hash === inputs[j].hash) same.push(j);
        shown = await sameUpToEarlierSimpleTypes(before, after, async (n) => {
          if (n >= same.length) return undefined;
          // The next one read meanwhile: two pahole at a time.
          if (n + 1 < same.length) void classesOf(inputs[same[n + 1]]);
          return (await classesOf(inputs[same[n]])) ?? undefined;
        }, () => lastBtfClasses(r.btf));
        if (shown.same) {
          const witnesses = shown.witnesses.map((n) => ({ index: same[n], hash: inputs[same[n]].hash }));
          inputs[k] = { ...inputs[k], sameTypes: [...(inputs[k].sameTypes ?? []), { was: was.hash, witnesses }] };
          continue;
        }
        if (shown.reason === NOT_SIMPLE) notSimple.set(pair, shown.reason);
      }
      if (!shown.same) {
        inputs[k] = { ...inputs[k], whyNotSame: budget <= 0 ? `${shown.reason}, in the ${EARLIER_READ_BUDGET} objects read this link` : shown.reason };
        whole = false;
        break;
      }
    }
    // The newest record shown whole is the one the planner takes.
    if (whole) break;
  }
  // Keep what a record or an object now names.
  const named = new Set<string>();
  for (const r of opts.records) for (const i of r.inputs) named.add(i.hash);
  for (const i of inputs) named.add(i.hash);
  for (const sub of [path.join(dir, "encodings"), classesDir]) {
    let names: string[] = [];
    try {
      names = fs.readdirSync(sub);
    } catch { /* none yet */ }
    for (const n of names) if (!named.has(n.replace(/\.(btf|json)$/, ""))) fs.rmSync(path.join(sub, n), { force: true });
  }
}

/** The pahole's version (`v1.24`), asked once per pahole. */
const versions = new Map<string, Promise<string>>();
function paholeVersion(pahole: string, cwd: string): Promise<string> {
  let v = versions.get(pahole);
  if (!v) {
    v = runProcess([pahole, "--version"], { cwd, timeoutMs: 60_000, tool: "pahole" }).then((r) => (r.code === 0 ? r.stdout.trim() : `unknown (${r.error ?? r.output.trim()})`));
    versions.set(pahole, v);
  }
  return v;
}

/** The BTF step of a link, made ready before kbuild's final link runs: the environment that
 * gives link-vmlinux.sh ktld's PAHOLE, and what it did once the link is done. */
export interface BtfStep {
  readonly env: Record<string, string>;
  outcome(): BtfOutcome | undefined;
  /** No kept .BTF is for these objects: pahole runs on this link unless a record is added. */
  readonly paholeRuns: boolean;
  /** The plan the shim reads, for pahole run ahead (src/btfahead.ts). */
  readonly plan: BtfPlanFile;
  /** `.tmp_vmlinux1` linked without debug info from here on (false: ktld's LD is not in place). */
  stripFirstLink(): boolean;
  /** `record` first among those the shim picks from. */
  addRecord(record: BtfRecord): void;
}

/** Makes the BTF step ready: the superset BTF of each object of vmlinux.o that changed since
 * the record (before, from the native cache's copy of its old bytes, and now), the plan file
 * and ktld's PAHOLE beside it. A reason instead when ktld leaves BTF to kbuild's pahole. */
export async function prepareBtf(opts: {
  buildDir: string; stateDir: string; env: Record<string, string>; config: ReadonlyMap<string, string>;
  inputs: readonly string[]; hashOf: (file: string) => Hash | null | undefined; blobOf: (hash: Hash) => string | undefined;
  records: readonly BtfRecord[]; signal?: AbortSignal;
  /** The tree's link-vmlinux.sh runs pahole on `.tmp_vmlinux1` (btfFromFirstLink). */
  btfFromFirstLink: boolean;
}): Promise<BtfStep | { readonly skip: string }> {
  if (opts.config.get("CONFIG_DEBUG_INFO_BTF") !== "y") return { skip: "no CONFIG_DEBUG_INFO_BTF" };
  if (!opts.btfFromFirstLink) return { skip: "this tree's link-vmlinux.sh does not make the BTF from .tmp_vmlinux1 (6.12's way, which ktld's BTF step knows): kbuild's pahole runs as kbuild runs it" };
  const real = opts.env.PAHOLE || "pahole";
  const version = await paholeVersion(real, opts.buildDir);
  if (version !== KNOWN_PAHOLE) return { skip: `pahole ${version}: ktld knows the encoder of ${KNOWN_PAHOLE} only` };
  const dir = path.join(opts.stateDir, "btf");
  const wrapper = path.join(opts.stateDir, "pahole");
  if (/\s/.test(wrapper)) return { skip: "the state dir's path has a space (link-vmlinux.sh splits $PAHOLE)" };
  fs.mkdirSync(dir, { recursive: true });
  const tools = { pahole: real, pfunct: "pfunct", objcopy: opts.env.OBJCOPY || "llvm-objcopy", flags: (opts.env.PAHOLE_FLAGS ?? "").split(/\s+/).filter(Boolean) };
  const records = opts.records;
  const inputs: BtfInput[] = opts.inputs.map((p) => ({ path: p, hash: opts.hashOf(p) ?? "<missing>" }));
  // The superset BTF of each object now that differs from a record's, and of the record's
  // (from the native cache's copy of its bytes) where the record does not have it.
  // Each encoding made here is parsed once: the look at simple types takes its types.
  const parsed = new Map<Hash, Superset>();
  const memo = new Map<string, Promise<Hash | undefined>>();
  const sbtfOf = (key: string, file: string) => {
    let p = memo.get(key);
    if (!p) {
      p = encodeSuperset(file, tools, dir, opts.signal, encodingFile(dir, key)).then((made) => {
        parsed.set(key, made);
        return made.hash;
      }, () => undefined);
      memo.set(key, p);
    }
    return p;
  };
  const filled: BtfRecord[] = [];
  const jobs: (() => Promise<void>)[] = [];
  for (const r of records) {
    const aligned = r.inputs.length >= inputs.length && inputs.every((i, k) => r.inputs[k].path === i.path);
    const rin = r.inputs.map((x) => ({ ...x }));
    filled.push({ ...r, inputs: rin });
    if (!aligned) continue;
    inputs.forEach((i, k) => {
      if (rin[k].hash === i.hash) return;
      jobs.push(async () => {
        const now = await sbtfOf(i.hash, path.join(opts.buildDir, i.path));
        if (now) inputs[k] = { ...inputs[k], sbtf: now };
      });
      const old = rin[k];
      const bytes = old.sbtf === undefined ? opts.blobOf(old.hash) : undefined;
      if (bytes) jobs.push(async () => {
        const before = await sbtfOf(old.hash, bytes);
        if (before) rin[k] = { ...rin[k], sbtf: before };
      });
    });
  }
  await eachLimited(jobs, 2, (job) => job());
  await showSameUpToSimpleTypes({ dir, tools, buildDir: opts.buildDir, records: filled, inputs, blobOf: opts.blobOf, parsed, signal: opts.signal });
  const result = path.join(dir, "result.json");
  fs.rmSync(result, { force: true });
  const plan: BtfPlanFile = {
    real, tools: { pahole: real, pfunct: tools.pfunct }, records: filled, inputs,
    extra: [".vmlinux.export.o", "init/version-timestamp.o"], buildDir: opts.buildDir, btfDir: dir, result,
  };
  // .tmp_vmlinux1 without debug info when its DWARF will likely not be read.
  const ld = opts.env.LD ?? "";
  const PATH = opts.env.PATH ?? process.env.PATH ?? "";
  const realLd = ld && !ld.includes("/") && !/\s/.test(ld) ? which(ld, PATH) : undefined;
  const reuse = predictReuse(filled, inputs, paholeKey(real, tools.flags));
  const bin = path.join(dir, "bin");
  fs.rmSync(bin, { recursive: true, force: true });
  const firstLink = realLd !== undefined ? { real: realLd, args: path.join(dir, "tmp_vmlinux1.args"), strip: path.join(dir, "strip-first-link") } : undefined;
  if (firstLink) {
    fs.mkdirSync(bin, { recursive: true });
    fs.rmSync(firstLink.args, { force: true });
    fs.rmSync(firstLink.strip, { force: true });
    if (reuse) fs.writeFileSync(firstLink.strip, "");
    fs.writeFileSync(path.join(bin, ld), firstLinkShim(firstLink.real, firstLink.args, firstLink.strip), { mode: 0o755 });
  }
  const planFile = path.join(dir, "plan.json");
  let full: BtfPlanFile = { ...plan, ...(firstLink ? { firstLink } : {}) };
  fs.writeFileSync(planFile, JSON.stringify(full));
  fs.writeFileSync(wrapper, `#!/bin/sh\nexec ${quote(process.execPath)} ${quote(path.join(__dirname, "btfshim.js"))} "$@"\n`, { mode: 0o755 });
  return {
    env: { PAHOLE: wrapper, KTLD_BTF_PLAN: planFile, ...(firstLink ? { PATH: `${bin}:${PATH}` } : {}) },
    paholeRuns: !reuse,
    get plan() {
      return full;
    },
    stripFirstLink: () => {
      if (!firstLink) return false;
      fs.writeFileSync(firstLink.strip, "");
      return true;
    },
    addRecord: (record) => {
      full = { ...full, records: [record, ...full.records] };
      fs.writeFileSync(planFile, JSON.stringify(full));
    },
    outcome: () => {
      try {
        return JSON.parse(fs.readFileSync(result, "utf8")) as BtfOutcome;
      } catch {
        return undefined;
      }
    },
  };
}
