// The shapes of what ktld reads from a kbuild tree (its objects, units, modules, layout),
// apart from the code that reads them: every file of src/kbuild/ and the engine name these,
// and this file names nothing of theirs.
import type { CmdFile } from "./cmdfile";

/** One object of vmlinux's link, in link order. */
export interface LinkObject {
  /** Path relative to the build dir, exactly as the linker is given it. */
  readonly path: string;
  readonly bitcode: boolean;
  /** Linked with archive (lazy) semantics: a member of a KBUILD_VMLINUX_LIBS archive. */
  readonly lazy: boolean;
}

/** A bitcode object: a ThinLTO module with its FE record. */
export interface BitcodeUnit {
  readonly object: string;
  readonly cmd: CmdFile;
  /** The FE compiler (argv[0] of the saved command, after a wrapper). */
  readonly compiler: string;
  /** Flags for the BE: `saved_c_flags_` in dist-mode trees, else derived from the FE command. */
  readonly backendFlags: readonly string[];
}

export interface KbuildTree {
  readonly buildDir: string;
  /** The wrapper kbuild's compiles ran through (`ccache`), if any. */
  readonly compilerWrapper?: string;
  readonly srcTree: string;
  readonly distMode: boolean;
  /** What the engine asks instead of testing distMode (src/kbuild/layout.ts). */
  readonly layout: TreeLayout;
  /** make variables that reproduce this tree's setup (`LLVM=-19`, `ARCH=x86_64`). */
  readonly makeVars: readonly string[];
  readonly objects: readonly LinkObject[];
  readonly units: ReadonlyMap<string, BitcodeUnit>;
  /** The vmlinux.o link as kbuild ran it: the ld argv, and what followed it (objtool). */
  readonly vmlinuxLink: { readonly ldArgv: readonly string[]; readonly after: string };
  /** Archives kbuild gave the vmlinux.o link whole, and lazily (KBUILD_VMLINUX_LIBS). */
  readonly wholeArchives: readonly string[];
  readonly libArchives: readonly string[];
  /** The archives kbuild's descent makes for vmlinux: `vmlinux.a` in a classic tree; in a
   * dist-mode tree KBUILD_VMLINUX_OBJS (`./built-in.a lib/lib.a ...`), since there
   * `vmlinux.a` is the archive of natives at the end of the LTO pipeline. */
  readonly prelinkArchives: readonly string[];
  readonly config: ReadonlyMap<string, string>;
  /** The loadable kernel modules (empty without CONFIG_MODULES or before `make modules`). */
  readonly kernelModules: readonly KernelModule[];
  /** The bitcode units of the kernel modules, by where their bitcode is (src/kbuild/modules.ts). */
  readonly moduleUnits: ReadonlyMap<string, BitcodeUnit>;
}

export type KbuildEnv = Record<string, string>;

export interface TreeLayout {
  readonly kind: "classic" | "dist";
  /** After FE replays: the archives kbuild makes from the objects, brought up to date.
   * Nothing of ktld's thin-link or BE reads them (only the link's kbuild steps and make
   * do), so this runs beside them. Returns the targets it re-made. */
  remakeArchives(tree: KbuildTree, env: () => Promise<KbuildEnv>): Promise<string[]>;
  /** The thin-link's list of the bitcode units it loaded, kept where kbuild keeps it. */
  publishIndexList(tree: KbuildTree, loaded: readonly string[]): void;
  /** A native on disk that ktld has no record of, made by kbuild from its current inputs
   * (taken as it is on a first build). */
  madeByKbuild(tree: KbuildTree, object: string): boolean;
  /** After ktld compiled a native: kbuild's record of it, where kbuild keeps one. */
  recordNative(tree: KbuildTree, unit: BitcodeUnit): void;
  /** What kbuild's initcall generator reads: the objects, or the natives. */
  initcallObjects(tree: KbuildTree, inputs: readonly LinkObject[]): readonly LinkObject[];
  /** Whether those are known before the BE (the objects): then a first link reads their
   * initcalls beside the BE. */
  readonly initcallsBeforeBackend: boolean;
  /** The vmlinux.o link with the natives in place of the bitcode. */
  vmlinuxOArgv(tree: KbuildTree, inputs: readonly LinkObject[]): string[];
  /** Before the vmlinux.o link. */
  beforeVmlinuxO(tree: KbuildTree, inputs: readonly LinkObject[], env: KbuildEnv, log: (label: string, target: string) => void): Promise<void>;
  /** At the end of a build: the mtimes make compares, moved forward for what ktld checked by
   * content, so that make agrees. */
  settle(tree: KbuildTree, units: readonly string[]): void;
}

/** One member object of a kernel module. */
export interface ModuleMember {
  /** The object as kbuild names it (its `.cmd` record's target). */
  readonly object: string;
  /** Where its bitcode is: the object itself, or ktld's file for a single-object module. */
  readonly bitcode: string;
  /** Not bitcode (an assembler source): linked as it is. */
  readonly native: boolean;
}

/** A loadable kernel module (`.ko`) of the tree: its object (`modules.order`), its members
 * (`<mod>.mod`), the files they were made from, and kbuild's link of the module object. */
export interface KernelModule {
  readonly name: string;
  /** `fs/ext4/ext4.o`; the `.ko` is beside it. */
  readonly object: string;
  readonly members: readonly ModuleMember[];
  /** One object compiled and linked in place by the same rule (cmd_ld_single_m). */
  readonly single: boolean;
  /** Absolute paths of the members' sources and headers. */
  readonly inputs: readonly string[];
  /** kbuild's `ld -r` of the module object (argv) and what followed it (objtool), as recorded;
   * undefined when ktld cannot place the module: then `unplaced` says why. */
  readonly link?: { readonly ldArgv: readonly string[]; readonly after: string };
  readonly unplaced?: string;
}
