// kbuild import: what a built kernel tree says about the LTO link of vmlinux.
// Everything here is read from the build dir; nothing is written.
import * as fs from "node:fs";
import * as path from "node:path";
import { KtldError } from "../base/errors";
import { isBitcode, readHead } from "../base/hash";
import { argvOf, splitCommands, tokenize } from "../base/shell";
import { thinArchiveMembers } from "./archive";
import { CmdFile, intern, readCmdFile } from "./cmdfile";
import { readKernelModules } from "./modules";
import { CLASSIC, DIST } from "./layout";
import type { BitcodeUnit, KbuildTree, LinkObject } from "./types";

export type { BitcodeUnit, KbuildTree, LinkObject };

/** Compiler wrappers kbuild may have recorded in front of clang (`make CC="ccache clang-19"`).
 * FE replays keep them (they run kbuild's command as recorded); BE compiles run clang without
 * them: ccache (4.7) counts a `-x ir -fthinlto-index=` compile as an unsupported source
 * language and only adds its own overhead, and a distributing wrapper would need the index
 * and the imported bitcode sent along. */
export const COMPILER_WRAPPERS: ReadonlySet<string> = new Set(["ccache", "sccache", "distcc", "icecc"]);

/** The wrapper (if any) and the compile argv after it. */
export function splitWrapper(argv: readonly string[]): { wrapper?: string; argv: readonly string[] } {
  return argv.length > 1 && COMPILER_WRAPPERS.has(path.basename(argv[0])) ? { wrapper: argv[0], argv: argv.slice(1) } : { argv };
}

export function readConfig(file: string): Map<string, string> {
  const map = new Map<string, string>();
  for (const line of fs.readFileSync(file, "utf8").split("\n")) {
    const m = /^(CONFIG_[A-Za-z0-9_]+)=(.*)$/.exec(line);
    if (m) map.set(m[1], m[2]);
  }
  return map;
}

/** The FE command's flags with what only the FE needs taken out: the depfile, `-c`,
 * `-o <obj>` and the source. What is left is what the BE must see to make the same code. */
/** What lld's in-process ThinLTO (the `vmlinux.o` link of a classic tree) sets for every
 * module's code generation and a clang BE compile does not by default: a section per
 * function and per datum (lld/ELF/LTO.cpp, createConfig, LLVM 19: "Always emit a section per
 * function/datum with LTO"). Without them a classic tree's natives have one .text and one
 * .data per module, and modpost's section checks (the `*_ops` allowance, references into
 * .init.text) see other sections than kbuild's own link: "Section mismatches detected".
 * The rest of lld's config is what clang's BE already does with the FE's flags: address-
 * significance tables (clang's -faddrsig default for ELF with the integrated assembler), the
 * relocation and code model (under `-r` lld takes them from the module, as -fno-PIE and
 * -mcmodel=kernel give clang), OptLevel 2 and CG level Default (-O2 and -Os alike), loop and
 * SLP vectorization at OptLevel > 1, CPU and features from the functions' attributes.
 * Checked by test/build.test.ts: ktld's vmlinux.o has kbuild's sections, name for name. */
export const IN_PROCESS_LTO_CODEGEN: readonly string[] = ["-ffunction-sections", "-fdata-sections"];

export function deriveBackendFlags(feArgv: readonly string[], object: string, source?: string): string[] {
  const flags: string[] = [];
  for (let i = 1; i < feArgv.length; i++) {
    const a = feArgv[i];
    if (a.startsWith("-Wp,-MMD,") || a.startsWith("-Wp,-MD,") || a === "-c" || a === "-MD" || a === "-MMD") continue;
    if (a === "-o" || a === "-MF" || a === "-MT" || a === "-MQ") {
      i++;
      continue;
    }
    if (a === source || (!a.startsWith("-") && /\.(c|S|s)$/.test(a) && feArgv[i - 1] !== "-include")) continue;
    if (a === object) continue;
    flags.push(a);
  }
  return flags;
}

/** `clang-19` → `LLVM=-19`, `clang` → `LLVM=1`, `/usr/lib/llvm-19/bin/clang` → `LLVM=/usr/lib/llvm-19/bin/`. */
export function llvmMakeVar(compiler: string): string {
  const base = path.basename(compiler);
  const dir = compiler.includes("/") ? path.dirname(compiler) + "/" : "";
  const m = /^clang(-\d+)?$/.exec(base);
  if (!m) throw new KtldError(`the tree was compiled with ${compiler}, not clang; ktld needs a Clang (LLVM=1) build`);
  if (dir) return `LLVM=${dir}`;
  return `LLVM=${m[1] ?? "1"}`;
}

const ARCH_BY_CONFIG: ReadonlyArray<[string, string]> = [
  ["CONFIG_X86_64", "x86_64"], ["CONFIG_X86_32", "i386"], ["CONFIG_ARM64", "arm64"], ["CONFIG_ARM", "arm"],
  ["CONFIG_RISCV", "riscv"], ["CONFIG_LOONGARCH", "loongarch"], ["CONFIG_PPC", "powerpc"], ["CONFIG_S390", "s390"],
];

export function archOf(config: ReadonlyMap<string, string>): string {
  for (const [sym, arch] of ARCH_BY_CONFIG) if (config.get(sym) === "y") return arch;
  const named = [...config].find(([k, v]) => v === "y" && /^CONFIG_(MIPS|SPARC|PARISC|ALPHA|M68K|SH|XTENSA|NIOS2|OPENRISC|CSKY|MICROBLAZE|ARC|HEXAGON|UML)$/.test(k))?.[0];
  const what = named ? `a ${named.slice(7).toLowerCase()} tree` : "a tree whose ARCH .config does not name";
  throw new KtldError(`${what}: ktld links x86_64, i386, arm64, arm, riscv, loongarch, powerpc and s390 kernels (the arches with Clang ThinLTO)`);
}

function srcTreeOf(buildDir: string): string {
  // An O= build dir has a `source` symlink to the source tree; an in-tree build has none.
  try {
    return fs.realpathSync(path.join(buildDir, "source"));
  } catch {
    return buildDir;
  }
}

/** ktld writes where kbuild does (index files, natives, vmlinux): the build dir must
 * take writes. A read-only one is refused before anything starts. */
export function checkWritable(tree: KbuildTree): void {
  try {
    fs.accessSync(tree.buildDir, fs.constants.W_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    throw new KtldError(`build dir ${tree.buildDir} is ${code === "EROFS" ? "on a read-only file system" : "not writable"} (${code}); ktld writes index files, natives and vmlinux there as kbuild does: make it writable (or build a copy)`);
  }
}

/** The kernel versions whose kbuild ktld reads (its records, archives and link steps) and is
 * tested on. Another version is refused up front rather than half understood. Where they
 * differ, ktld reads the tree's own records and scripts (`cmd_` or `savedcmd_` records; the
 * shape of link-vmlinux.sh for the BTF step; the module records' steps) rather than the version. */
export const SUPPORTED_KERNELS: readonly string[] = ["6.12", "6.1"];

/** The series whose kernel modules ktld links itself (its module steps are tested there);
 * other series' modules are left to kbuild. */
const MODULE_KERNELS: readonly string[] = ["6.12", "6.1"];

/** Whether this tree's link-vmlinux.sh makes vmlinux's BTF from `.tmp_vmlinux1` (6.12's shape,
 * the one ktld's BTF step stands in for); read from the tree's own script. 6.1 makes it from
 * `.tmp_vmlinux.btf`, a link of its own. */
export function btfFromFirstLink(tree: KbuildTree): boolean {
  try {
    return /\bgen_btf \.tmp_vmlinux1\b/.test(fs.readFileSync(path.join(tree.srcTree, "scripts/link-vmlinux.sh"), "utf8"));
  } catch {
    return false;
  }
}

/** Refuses a tree of a kernel version ktld does not know (kbuild's `kernel.release`); returns
 * its series (`6.12`), or undefined for a tree not prepared yet. */
function checkKernelVersion(buildDir: string, buildDirArg: string): string | undefined {
  let release: string;
  try {
    release = fs.readFileSync(path.join(buildDir, "include/config/kernel.release"), "utf8").trim();
  } catch {
    return undefined; // not prepared: "not built yet" says what to do
  }
  const series = /^(\d+\.\d+)/.exec(release)?.[1];
  if (series && !SUPPORTED_KERNELS.includes(series)) {
    throw new KtldError(`${buildDirArg} is Linux ${release}; ktld supports Linux ${SUPPORTED_KERNELS.join(" and ")} only (Debian's linux-source-6.12 and -6.1): build this tree with make, or use a supported tree`);
  }
  return series;
}

/** Reads a build dir. Throws a KtldError naming the fix for anything that is not a built
 * Clang ThinLTO tree. */
/** kbuild refuses a tree whose real path has a space or a colon ("main directory cannot contain
 * spaces nor colons", make's CURDIR being the real path); so does ktld, before it runs make. */
function checkPathWords(buildDir: string, buildDirArg: string): void {
  for (const [what, dir] of [["build dir", buildDir], ["source tree", srcTreeOf(buildDir)]] as const) {
    const real = fs.realpathSync(dir);
    if (/[\s:]/.test(real)) {
      throw new KtldError(`the ${what} of ${buildDirArg} lies at '${real}', a path with a space or a colon, which kbuild refuses; move the tree to a path without them (a symlink does not help: make works in the real path)`);
    }
  }
}

export function importTree(buildDirArg: string): KbuildTree {
  const buildDir = path.resolve(buildDirArg);
  if (!fs.existsSync(buildDir)) throw new KtldError(`build dir ${buildDirArg} does not exist; pass --build-dir DIR (the O= dir, or the source tree for in-tree builds)`);
  const configFile = path.join(buildDir, ".config");
  if (!fs.existsSync(configFile)) {
    throw new KtldError(`${buildDirArg} is not a configured kernel build dir (no .config); run make LLVM=1 <config> there first`);
  }
  const config = readConfig(configFile);
  const arch = archOf(config);
  const distMode = config.get("CONFIG_LTO_CLANG_THIN_DIST") === "y";
  if (config.get("CONFIG_LTO_CLANG_THIN") !== "y" && !distMode) {
    throw new KtldError(
      `${buildDirArg} is not a Clang ThinLTO build: run scripts/config -d LTO_NONE -e LTO_CLANG_THIN, then make LLVM=1 olddefconfig vmlinux`,
    );
  }
  const series = checkKernelVersion(buildDir, buildDirArg);
  checkPathWords(buildDir, buildDirArg);
  if (!fs.existsSync(path.join(buildDir, ".vmlinux.o.cmd")) || !fs.existsSync(path.join(buildDir, "vmlinux.a"))) {
    throw new KtldError(`${buildDirArg} is not built yet (no vmlinux.o); run make LLVM=1 vmlinux there first`);
  }
  const linkCmd = readCmdFile(buildDir, "vmlinux.o");
  const cmds = splitCommands(linkCmd.command);
  const ldArgv = argvOf(cmds[0]);
  const after = linkCmd.command.slice(linkCmd.command.indexOf(";") >= 0 ? linkCmd.command.indexOf(";") + 1 : linkCmd.command.length).trim();

  const { whole, libs } = archivesOfLink(ldArgv);
  // A dist-mode vmlinux.a holds natives; the objects of the LTO link are in builtin.order.
  const wholeObjects = distMode ? readBuiltinOrder(buildDir, buildDirArg) : whole.flatMap((a) => thinArchiveMembers(buildDir, a).map((m) => [a, m] as const));
  const lazyObjects = libs.flatMap((a) => thinArchiveMembers(buildDir, a).map((m) => [a, m] as const));
  const objects: LinkObject[] = [];
  for (const [list, lazy] of [[wholeObjects, false], [lazyObjects, true]] as const) {
    for (const [a, member] of list) {
      let head: Buffer;
      try {
        head = readHead(path.join(buildDir, member));
      } catch {
        throw new KtldError(`${member} (in ${a}) is missing; run make vmlinux to rebuild it`);
      }
      objects.push({ path: member, bitcode: isBitcode(head), lazy });
    }
  }
  if (!objects.some((o) => o.bitcode)) {
    throw new KtldError(`${buildDirArg}: no object of vmlinux is LLVM bitcode; rebuild with make LLVM=1 after enabling CONFIG_LTO_CLANG_THIN`);
  }

  const modules = new Map<string, BitcodeUnit>();
  let compilerWrapper: string | undefined;
  const unitOf = (object: string, bitcode: string, cmd: CmdFile): BitcodeUnit => {
    const { wrapper, argv: feArgv } = splitWrapper(argvOf(splitCommands(cmd.command)[0]));
    compilerWrapper ??= wrapper;
    // Dist mode: the seed's own BE flags, as kbuild runs them. Classic: the FE's, plus what
    // the in-process ThinLTO that ktld stands in for would have used.
    // Interned: most flags are the same in every unit.
    const backendFlags = (cmd.savedCFlags !== undefined
      ? tokenize(cmd.savedCFlags).map((t) => t.value)
      : [...deriveBackendFlags(feArgv, object, cmd.source), ...IN_PROCESS_LTO_CODEGEN]).map(intern);
    return { object: bitcode, cmd, compiler: intern(feArgv[0]), backendFlags };
  };
  for (const o of objects) {
    if (!o.bitcode || modules.has(o.path)) continue;
    const cmd = readCmdFile(buildDir, o.path);
    if (!cmd.depsComplete && cmd.source !== undefined) {
      throw new KtldError(`${path.join(path.dirname(o.path), "." + path.basename(o.path) + ".cmd")}: truncated; rebuild ${o.path} with make to regenerate it`);
    }
    modules.set(o.path, unitOf(o.path, o.path, cmd));
  }
  const firstModule = modules.values().next().value as BitcodeUnit;
  // make must see the CC the tree was built with, or it would rebuild every object for a
  // changed command line.
  const makeVars = [llvmMakeVar(firstModule.compiler), `ARCH=${arch}`, ...(compilerWrapper ? [`CC=${compilerWrapper} ${firstModule.compiler}`] : [])];
  const prelinkArchives = distMode ? vmlinuxObjsOf(buildDir) : whole;
  // Kernel modules in a classic tree only: a dist-mode tree's modules are the seed's to make.
  const modulesWhy = distMode ? "a CONFIG_LTO_CLANG_THIN_DIST tree, whose modules the seed's make builds in-process"
    : series && !MODULE_KERNELS.includes(series) ? `Linux ${series}: ktld's module steps are tested on ${MODULE_KERNELS.join(", ")} only` : undefined;
  const km = config.get("CONFIG_MODULES") === "y" ? readKernelModules(buildDir, modulesWhy ? undefined : unitOf, modulesWhy) : { modules: [], units: new Map() };
  return {
    kernelModules: km.modules, moduleUnits: km.units,
    compilerWrapper, buildDir, srcTree: srcTreeOf(buildDir), distMode, layout: distMode ? DIST : CLASSIC, makeVars, objects, units: modules,
    vmlinuxLink: { ldArgv, after }, wholeArchives: whole, libArchives: libs, prelinkArchives, config,
  };
}

/** `builtin.order` of a dist-mode tree: the objects of vmlinux's LTO link, in link order. */
/** An FE replay of `object` wrote a new record: the unit's BE flags and deps follow it. The
 * tree's units are its own to change (built as a Map here, read-only to everyone else). */
export function replayedUnit(tree: KbuildTree, object: string, cmd: CmdFile): void {
  const unit = tree.units.get(object);
  if (unit) (tree.units as Map<string, BitcodeUnit>).set(object, { ...unit, cmd });
  for (const km of tree.kernelModules) {
    const m = km.members.find((x) => x.object === object);
    const mu = m && tree.moduleUnits.get(m.bitcode);
    if (mu) (tree.moduleUnits as Map<string, BitcodeUnit>).set(m.bitcode, { ...mu, cmd });
  }
}

function readBuiltinOrder(buildDir: string, buildDirArg: string): (readonly [string, string])[] {
  let text: string;
  try {
    text = fs.readFileSync(path.join(buildDir, "builtin.order"), "utf8");
  } catch {
    throw new KtldError(`${buildDirArg} is a CONFIG_LTO_CLANG_THIN_DIST tree without builtin.order; run make LLVM=1 vmlinux there first`);
  }
  return text.split("\n").filter(Boolean).map((m) => ["builtin.order", path.normalize(m)] as const);
}

/** KBUILD_VMLINUX_OBJS as kbuild archived them into built-in-fixup.a (dist mode). */
function vmlinuxObjsOf(buildDir: string): string[] {
  const cmd = readCmdFile(buildDir, "built-in-fixup.a");
  for (const c of splitCommands(cmd.command)) {
    const argv = argvOf(c);
    const at = argv.indexOf("built-in-fixup.a");
    if (at > 1 && /^c/.test(argv[at - 1])) return argv.slice(at + 1);
  }
  throw new KtldError("built-in-fixup.a: its .cmd file names no archives; run make LLVM=1 vmlinux to regenerate it");
}

/** The archives of kbuild's vmlinux.o link: `--whole-archive vmlinux.a --no-whole-archive`
 * and the lazy libraries (`--start-group lib/lib.a ... --end-group`, or `--start-lib`). */
export function archivesOfLink(ldArgv: readonly string[]): { whole: string[]; libs: string[] } {
  const whole: string[] = [];
  const libs: string[] = [];
  let wholeMode = false;
  let lazyMode = false;
  for (const a of ldArgv) {
    if (a === "--whole-archive") wholeMode = true;
    else if (a === "--no-whole-archive") wholeMode = false;
    else if (a === "--start-group" || a === "--start-lib" || a === "-(") lazyMode = true;
    else if (a === "--end-group" || a === "--end-lib" || a === "-)") lazyMode = false;
    else if (a.endsWith(".a") && !a.startsWith("-")) (wholeMode && !lazyMode ? whole : libs).push(a);
  }
  if (whole.length === 0) throw new KtldError("the vmlinux.o link in .vmlinux.o.cmd has no --whole-archive vmlinux.a; unsupported kbuild version");
  return { whole, libs };
}
