// kbuild's loadable kernel modules (`.ko`), as a built tree records them, and what ktld needs
// to make one through distributed ThinLTO instead of kbuild's in-process LTO:
//
//   multi-object (fs/ext4/ext4.o):  members (bitcode) listed in ext4.mod;
//     savedcmd_fs/ext4/ext4.o := ld.lld -m elf_x86_64 ... -r -o fs/ext4/ext4.o @fs/ext4/ext4.mod ; objtool ... --module fs/ext4/ext4.o
//   single-object (drivers/block/loop.o): the compile writes bitcode to loop.o and the same
//     rule links it in place (cmd_ld_single_m), so no bitcode is left after make:
//     savedcmd_drivers/block/loop.o := clang ... -c -o drivers/block/loop.o ../drivers/block/loop.c ;
//       ld.lld ... -r -o drivers/block/.tmp_loop.o drivers/block/loop.o; mv drivers/block/.tmp_loop.o drivers/block/loop.o ; objtool ...
//     ktld keeps that unit's bitcode in a file of its own beside it (`.loop.ktld-bitcode.o`).
//
// After the module objects: modpost (scripts/Makefile.modpost, every module and vmlinux.o at
// once), then scripts/Makefile.modfinal (`<mod>.mod.o`, the `.ko` link, BTF against vmlinux).
import * as fs from "node:fs";
import * as path from "node:path";
import { isBitcode, readHead } from "../base/hash";
import { argvOf, quoteArgv, splitCommands } from "../base/shell";
import { CmdFile, intern, readCmdFile } from "./cmdfile";
import { modulesOrder } from "./order";
import type { BitcodeUnit, KernelModule, ModuleMember } from "./types";

export type { KernelModule, ModuleMember };

/** Where ktld keeps the bitcode of a single-object module's one unit. */
export function singleBitcodePath(object: string): string {
  return path.join(path.dirname(object), `.${path.basename(object, ".o")}.ktld-bitcode.o`);
}

/** The compile part of a single-object module's recorded command, writing to `bitcode`
 * instead of the object (which keeps kbuild's native until ktld links the new one). */
export function singleCompileCommand(cmd: CmdFile, bitcode: string): string | undefined {
  const argv = argvOf(splitCommands(cmd.command)[0]);
  const outs = argv.flatMap((a, i) => (a === "-o" ? [i] : []));
  if (outs.length !== 1 || argv[outs[0] + 1] !== cmd.target) return undefined;
  argv[outs[0] + 1] = bitcode;
  return quoteArgv(argv);
}

/** The `ld -r` of a module object with `inputs` in place of kbuild's (the `@<mod>.mod` list,
 * or the single object), writing `output`. */
export function moduleLinkArgv(km: KernelModule, inputs: readonly string[], output: string): string[] {
  const ld = km.link!.ldArgv;
  const out: string[] = [];
  for (let i = 0; i < ld.length; i++) {
    const a = ld[i];
    if (a === "-o") {
      i++;
      continue;
    }
    if (a.startsWith("@") || (i > 0 && a.endsWith(".o") && !a.startsWith("-"))) continue;
    out.push(a);
  }
  return [...out, "-o", output, ...inputs];
}

function ldFlagsOf(km: KernelModule): string[] {
  return moduleLinkArgv(km, [], "").slice(0, -2);
}

/** The thin-link of a module's bitcode members (`ld.lld -r --thinlto-index-only`), its
 * outputs under `stageDir`. */
export function moduleThinLinkArgv(km: KernelModule, stageDir: string, listFile: string): string[] {
  return [
    ...ldFlagsOf(km),
    ...km.members.map((m) => m.bitcode),
    `--thinlto-index-only=${listFile}`,
    "--thinlto-emit-imports-files",
    `--thinlto-prefix-replace=;${stageDir}/`,
    "-o", path.join(stageDir, "module.thinlink.o"),
  ];
}

/** The kernel modules kbuild listed in `modules.order`. `unitOf` makes a member's BE record
 * from its `.cmd` (the tree import's rule, shared with vmlinux's units); without it (a
 * dist-mode tree) every module is left to kbuild. A module whose
 * records are missing or not understood has no link (and a reason): its changes are then
 * reported, never misread. */
export function readKernelModules(buildDir: string, unitOf?: (object: string, bitcode: string, cmd: CmdFile) => BitcodeUnit, notLinkedWhy?: string): { modules: KernelModule[]; units: Map<string, BitcodeUnit> } {
  const modules: KernelModule[] = [];
  const units = new Map<string, BitcodeUnit>();
  const owner = new Map<string, string>();
  for (const object of modulesOrder(buildDir)) {
    const name = path.basename(object, ".o");
    let listed: string[];
    try {
      listed = fs.readFileSync(path.join(buildDir, object.replace(/\.o$/, ".mod")), "utf8").split(/\s+/).filter(Boolean);
    } catch {
      listed = [object];
    }
    const single = listed.length === 1 && listed[0] === object;
    const inputs = new Set<string>();
    const cmds = new Map<string, CmdFile>();
    for (const m of listed) {
      try {
        const cmd = readCmdFile(buildDir, m);
        cmds.set(m, cmd);
        for (const f of [cmd.source, ...cmd.deps]) if (f !== undefined) inputs.add(intern(path.resolve(buildDir, f)));
      } catch {
        // no record of this member: its sources are not known
      }
    }
    let unplaced: string | undefined;
    let link: KernelModule["link"];
    const members: ModuleMember[] = [];
    try {
      if (!unitOf) throw new Error(notLinkedWhy ?? "ktld does not link this tree's modules");
      if (cmds.size !== listed.length) throw new Error("a member has no .cmd record");
      const own = single ? cmds.get(object)! : readCmdFile(buildDir, object);
      const steps = splitCommands(own.command);
      // multi: `ld -r ... @x.mod ; objtool`; single: `clang ... ; ld -r ...; mv ...; objtool`
      const ldAt = steps.findIndex((s) => /(^|\/)ld(\.lld)?(-\d+)?$/.test(argvOf(s)[0] ?? "") && argvOf(s).includes("-r"));
      if (ldAt < 0 || (single && ldAt !== 1) || (!single && ldAt !== 0)) throw new Error(`its .cmd record has no ld -r step where kbuild 6.12 puts it`);
      const rest = steps.slice(ldAt + 1).map(argvOf).filter((a) => a.length && a[0] !== "mv");
      link = { ldArgv: argvOf(steps[ldAt]).map(intern), after: rest.map(quoteArgv).join(" ; ") };
      for (const m of listed) {
        if (owner.has(m)) throw new Error(`${m} is also a member of ${owner.get(m)}`);
        owner.set(m, name);
        const bitcode = single ? singleBitcodePath(object) : m;
        const native = !single && !isBitcode(readHead(path.join(buildDir, m)));
        members.push({ object: m, bitcode, native });
        if (!native) units.set(bitcode, unitOf(m, bitcode, cmds.get(m)!));
      }
      if (single && !/\.c$/.test(cmds.get(object)!.source ?? "")) throw new Error("a single-object module not compiled from C");
      if (single && !singleCompileCommand(cmds.get(object)!, singleBitcodePath(object))) throw new Error("its compile command does not name its output once");
    } catch (e) {
      unplaced = `${name}.ko: ${(e as Error).message}; left to kbuild (make modules)`;
      link = undefined;
      for (const m of members) units.delete(m.bitcode);
      members.length = 0;
    }
    modules.push({ name, object, members, single, inputs: [...inputs], link, unplaced });
  }
  return { modules, units };
}
