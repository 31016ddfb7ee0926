// The object graph: which objects of vmlinux and of the kernel modules are made from which files, and what an edit
// of a file means — an FE replay of its dependents, or a job only kbuild can do.
import * as path from "node:path";
import { CmdFile, intern, readCmdFile } from "./kbuild/cmdfile";
import { KbuildTree } from "./kbuild/tree";

export interface ObjectNode {
  readonly object: string;
  readonly cmd: CmdFile;
  /** Absolute paths of the source and every dep fixdep recorded. */
  readonly inputs: readonly string[];
}

export class ObjectGraph {
  readonly nodes = new Map<string, ObjectNode>();
  /** A file → the objects made from it, in the order they were set. Arrays, not sets: the
   * x86_64 defconfig tree has 1.4 million of these edges, and sets of them took 55 MB. */
  private readonly dependents = new Map<string, string[]>();
  /** A dep as recorded → its absolute path (one string per file, resolved once). */
  private readonly absolute = new Map<string, string>();

  /** `srcTree`: where sources are shown relative to (the source tree of an O= build). */
  constructor(readonly buildDir: string, readonly srcTree: string = buildDir) {}

  /** A file as a person wants to read it: relative to the build dir, or to the source tree
   * of an O= build, else absolute. */
  shown(file: string): string {
    for (const base of [this.buildDir, this.srcTree]) {
      const rel = path.relative(base, file);
      if (!rel.startsWith("..") && !path.isAbsolute(rel)) return rel;
    }
    return file;
  }

  static fromTree(tree: KbuildTree): ObjectGraph {
    const g = new ObjectGraph(tree.buildDir, tree.srcTree);
    for (const o of tree.objects) {
      if (g.nodes.has(o.path)) continue;
      const mod = tree.units.get(o.path);
      let cmd: CmdFile | undefined = mod?.cmd;
      if (!cmd) {
        try {
          cmd = readCmdFile(tree.buildDir, o.path);
        } catch {
          continue; // an object kbuild made without a .cmd record: only kbuild can remake it
        }
      }
      if (cmd.source !== undefined) g.set(cmd);
    }
    // The members of the kernel modules ktld builds: their FE replays are the same.
    for (const km of tree.kernelModules) {
      for (const m of km.members) {
        if (g.nodes.has(m.object)) continue;
        let cmd = tree.moduleUnits.get(m.bitcode)?.cmd;
        try {
          cmd ??= readCmdFile(tree.buildDir, m.object);
        } catch {
          continue;
        }
        if (cmd.source !== undefined) g.set(cmd);
      }
    }
    return g;
  }

  set(cmd: CmdFile): void {
    const old = this.nodes.get(cmd.target);
    const abs = (f: string) => {
      let a = this.absolute.get(f);
      if (a === undefined) this.absolute.set(f, (a = intern(path.resolve(this.buildDir, f))));
      return a;
    };
    const inputs = [...new Set([cmd.source!, ...cmd.deps].map(abs))];
    this.nodes.set(cmd.target, { object: cmd.target, cmd, inputs });
    // Only the files that came or went move (an FE replay rarely changes the deps).
    const now = new Set(inputs);
    const before = new Set(old?.inputs ?? []);
    for (const f of before) {
      if (now.has(f)) continue;
      const list = this.dependents.get(f);
      const at = list?.indexOf(cmd.target) ?? -1;
      if (at >= 0) list!.splice(at, 1);
    }
    for (const f of inputs) {
      if (before.has(f)) continue;
      const list = this.dependents.get(f);
      if (list) list.push(cmd.target);
      else this.dependents.set(f, [cmd.target]);
    }
  }

  objectsUsing(file: string): readonly string[] {
    return [...(this.dependents.get(file) ?? [])];
  }

  /** Every file some object is made from. */
  files(): string[] {
    return [...this.dependents.keys()].filter((f) => this.dependents.get(f)!.length > 0);
  }
}

export type FileChange = { readonly file: string; readonly kind: "changed" | "added" | "removed" };

export interface ChangePlan {
  /** Reasons to hand the work to kbuild (Makefile, Kconfig, .config, new or deleted sources, generated headers). */
  readonly kbuild: readonly string[];
  /** Objects whose FE must be replayed → why. */
  readonly frontend: ReadonlyMap<string, string>;
  /** Files `.incbin`ed by some module that changed: a BE matter only. */
  readonly incbin: readonly string[];
  /** Changes to sources of loadable kernel modules, which ktld does not build yet: one line
   * each, saying so and what to run. */
  readonly notHandled: readonly string[];
}

export const KBUILD_FILE = /^(Makefile.*|Kbuild.*|Kconfig.*|\.config)$/;
export const GENERATED = /(^|\/)(include\/generated|include\/config|arch\/[^/]+\/include\/generated)\//;
const SOURCE_EXT = /\.(c|S)$/;
export const GENERATOR = /(\/asm-offsets[^/]*\.c|\/bounds\.c|\.tbl)$/;

/** What a set of content changes calls for. Pure. `kernelModulesUsing` names the loadable
 * kernel modules made from a file. */
export function planChanges(
  changes: readonly FileChange[], graph: ObjectGraph, incbinFiles: ReadonlySet<string>,
  kernelModulesUsing: (file: string) => readonly string[] = () => [],
): ChangePlan {
  const kbuild: string[] = [];
  const frontend = new Map<string, string>();
  const incbin: string[] = [];
  const notHandled: string[] = [];
  for (const c of changes) {
    const rel = path.relative(graph.buildDir, c.file);
    const shown = graph.shown(c.file);
    const users = graph.objectsUsing(c.file);
    const kmods = KBUILD_FILE.test(path.basename(c.file)) ? [] : kernelModulesUsing(c.file);
    if (kmods.length) {
      const names = kmods.slice(0, 3).map((m) => `${m}.ko`).join(", ") + (kmods.length > 3 ? ` and ${kmods.length - 3} more` : "");
      notHandled.push(`${shown} ${c.kind} (used by ${names}, which ktld leaves to kbuild): run make modules`);
    }
    if (KBUILD_FILE.test(path.basename(c.file))) {
      kbuild.push(`${shown} ${c.kind}`);
    } else if (c.kind === "removed" && users.length) {
      kbuild.push(`${shown} removed`);
    } else if (c.kind === "added" && SOURCE_EXT.test(c.file) && !users.length) {
      kbuild.push(`new source file ${shown}`);
    } else if (GENERATOR.test(c.file) && !users.length) {
      // Sources of generated headers (asm-offsets.c, syscall tables): only kbuild knows.
      kbuild.push(`${shown} (a source of generated headers) ${c.kind}`);
    } else if (incbinFiles.has(c.file)) {
      incbin.push(shown);
    } else {
      const kind = GENERATED.test(rel) ? "generated header" : "header";
      for (const o of users) {
        const own = graph.nodes.get(o)!.inputs[0] === c.file;
        if (!frontend.has(o) || own) frontend.set(o, `${own ? "source" : kind} ${shown} changed`);
      }
    }
  }
  return { kbuild, frontend, incbin, notHandled };
}
