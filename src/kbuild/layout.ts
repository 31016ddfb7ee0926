// Tree layouts: what differs between a stock CONFIG_LTO_CLANG_THIN tree ("classic": the BE
// runs inside the ld.lld that makes vmlinux.o, and ktld stands in for it) and a tree of the
// seed's CONFIG_LTO_CLANG_THIN_DIST ("dist": kbuild runs the four stages itself, with its own
// files and records, and ktld must leave them as make would). The engine asks the layout
// of the tree and never tests which one it is; another kernel version or LTO mode is
// another object of this interface.
import * as fs from "node:fs";
import * as path from "node:path";
import { runStep } from "../base/process";
import { indexPath, inputArgs, nativePath, TEMP_SUFFIX } from "./names";
import { cmdFilePath } from "./cmdfile";
import { archiverOf, mtimeOf, publishIndexList, refreshArchives, settleMtimes, vmlinuxAArgv, writeNativeCmdFile } from "./dist";
import type { KbuildEnv, TreeLayout } from "./types";

export type { KbuildEnv, TreeLayout };

export const CLASSIC: TreeLayout = {
  kind: "classic",
  /** kbuild's archives (built-in.a, lib.a, vmlinux.a) brought up to date after FE replays,
   * as make would: then make, run after ktld, has no newer archive to relink vmlinux.o for. */
  remakeArchives: async (tree, env) => refreshArchives(tree, await env(), [["vmlinux.a", ["built-in.a"]]]),
  publishIndexList: () => undefined,
  madeByKbuild: () => false,
  recordNative: () => undefined,
  initcallObjects: (tree) => tree.objects,
  initcallsBeforeBackend: true,
  /** kbuild's vmlinux.o ld argv with its archives replaced by the native inputs. */
  vmlinuxOArgv(tree, inputs) {
    const archives = new Set([...tree.wholeArchives, ...tree.libArchives]);
    const out: string[] = [];
    let placed = false;
    for (const a of tree.vmlinuxLink.ldArgv) {
      if (["--whole-archive", "--no-whole-archive", "--start-group", "--end-group", "--start-lib", "--end-lib", "-(", "-)"].includes(a)) continue;
      if (archives.has(a)) {
        if (!placed) out.push(...inputArgs(inputs));
        placed = true;
        continue;
      }
      out.push(a);
    }
    return out;
  },
  beforeVmlinuxO: async () => undefined,
  settle(tree) {
    const libs = tree.libArchives;
    settleMtimes(tree.buildDir, [
      [".tmp_initcalls.lds", ["vmlinux.a", ...libs]],
      ["vmlinux.o", [".tmp_initcalls.lds", "vmlinux.a", ...libs]],
      ["modules.builtin.modinfo", ["vmlinux.o"]],
      ["modules.builtin", ["modules.builtin.modinfo"]],
      ["vmlinux.symvers", ["vmlinux.o"]],
      ["vmlinux", ["vmlinux.o"]],
    ]);
  },
};

export const DIST: TreeLayout = {
  kind: "dist",
  remakeArchives: async (tree, env) => refreshArchives(tree, await env(), [
    ["built-in-fixup.a", tree.prelinkArchives],
    ["builtin.order", ["built-in-fixup.a"]],
  ]),
  publishIndexList: (tree, loaded) => publishIndexList(tree.buildDir, loaded),
  /** A native kbuild's Makefile.thinlto made, and that make would not remake: its `.cmd`
   * exists and it is newer than its bitcode and its index. */
  madeByKbuild(tree, object) {
    const t = mtimeOf(path.join(tree.buildDir, nativePath(object))) ?? 0;
    const older = (f: string) => (mtimeOf(path.join(tree.buildDir, f)) ?? Infinity) <= t;
    return older(object) && older(indexPath(object)) && fs.existsSync(path.join(tree.buildDir, cmdFilePath(nativePath(object))));
  },
  recordNative(tree, unit) {
    if (unit.cmd.savedCFlags === undefined) return;
    writeNativeCmdFile(tree.buildDir, unit.compiler, unit.cmd.savedCFlags, unit.object, nativePath(unit.object), indexPath(unit.object));
  },
  initcallObjects: (_tree, inputs) => inputs,
  initcallsBeforeBackend: false,
  /** kbuild's own: in a dist-mode tree `vmlinux.a` is the archive of the natives. */
  vmlinuxOArgv: (tree) => [...tree.vmlinuxLink.ldArgv],
  async beforeVmlinuxO(tree, inputs, env, log) {
    log("GEN", "vmlinux.a");
    // Made beside and renamed over it: a daemon killed here leaves kbuild's archive whole.
    const tmp = path.join(tree.buildDir, `vmlinux.a${TEMP_SUFFIX}`);
    fs.rmSync(tmp, { force: true });
    const argv = vmlinuxAArgv(archiverOf(tree.buildDir), inputs).map((a) => (a === "vmlinux.a" ? `vmlinux.a${TEMP_SUFFIX}` : a));
    await runStep(tree.buildDir, argv, env, "GEN vmlinux.a");
    fs.renameSync(tmp, path.join(tree.buildDir, "vmlinux.a"));
  },
  settle(tree, units) {
    const natives = units.map((m) => [nativePath(m), [m, indexPath(m)]] as const);
    settleMtimes(tree.buildDir, [
      ["vmlinux.thinlto-index", ["builtin.order"]],
      ...natives,
      ["vmlinux.a", ["builtin.order", "vmlinux.thinlto-index", ...natives.map(([n]) => n)]],
      [".tmp_initcalls.lds", ["vmlinux.a"]],
      ["vmlinux.o", [".tmp_initcalls.lds", "vmlinux.a"]],
      ["modules.builtin.modinfo", ["vmlinux.o"]],
      ["modules.builtin", ["modules.builtin.modinfo"]],
      ["vmlinux.symvers", ["vmlinux.o"]],
      ["vmlinux.unstripped", ["vmlinux.o"]],
      ["vmlinux", ["vmlinux.o", "vmlinux.unstripped"]],
    ]);
  },
};
