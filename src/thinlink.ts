// ThinLink: one `ld.lld --thinlto-index-only` over every object of vmlinux.
//
// lld rewrites every index file on every thin-link (same bytes, new mtime), so the index
// and imports files are written to a staging dir (--thinlto-prefix-replace) and only those
// whose bytes changed are moved into the build dir: unchanged ones keep their mtimes.
import * as fs from "node:fs";
import * as path from "node:path";
import { importsPath, indexPath } from "./backend";
import { HashCache, hashFile } from "./hash";
import { KbuildTree, LinkObject } from "./kbuild/tree";

/** kbuild's vmlinux.o ld argv without its inputs, output, map and linker script: the
 * flags (KBUILD_LDFLAGS) that decide what is imported where. */
export function linkerFlags(ldArgv: readonly string[], archives: ReadonlySet<string>): string[] {
  const flags: string[] = [];
  for (let i = 1; i < ldArgv.length; i++) {
    const a = ldArgv[i];
    if (a === "-o" || a === "-T" || a === "--script" || a === "-Map") {
      i++;
      continue;
    }
    if (/^(-T.+|--script=.*|--?Map=.*)$/.test(a)) continue;
    if (["--whole-archive", "--no-whole-archive", "--start-group", "--end-group", "--start-lib", "--end-lib", "-(", "-)"].includes(a)) continue;
    if (archives.has(a)) continue;
    flags.push(a);
  }
  return flags;
}

/** The objects as linker inputs: the whole ones directly, the lazy ones as a library. */
export function inputArgs(objects: readonly { path: string; lazy: boolean }[]): string[] {
  const whole = objects.filter((o) => !o.lazy).map((o) => o.path);
  const lazy = objects.filter((o) => o.lazy).map((o) => o.path);
  return lazy.length ? [...whole, "--start-lib", ...lazy, "--end-lib"] : whole;
}

export function thinLinkArgv(tree: KbuildTree, stageDir: string): string[] {
  const archives = new Set([...tree.wholeArchives, ...tree.libArchives]);
  return [
    tree.vmlinuxLink.ldArgv[0],
    ...linkerFlags(tree.vmlinuxLink.ldArgv, archives),
    ...inputArgs(tree.objects),
    `--thinlto-index-only=${path.join(stageDir, "vmlinux.thinlto-index")}`,
    "--thinlto-emit-imports-files",
    `--thinlto-prefix-replace=;${stageDir}/`,
    "-o", path.join(stageDir, "vmlinux.thinlink.o"),
  ];
}

export interface ThinLinkOutcome {
  /** Bitcode modules the thin-link loaded, in link order. A lazy member it did not load
   * is absent: it gets no index and no native, and stays out of the final link. */
  readonly modules: readonly string[];
  /** Modules whose index or imports file bytes changed (and were moved into place). */
  readonly changed: ReadonlySet<string>;
}

/** Renames `from` to `to`; across file systems (a --state-dir elsewhere), a copy next to
 * `to` renamed over it, so `to` is never seen half-written. */
function moveInto(from: string, to: string): void {
  try {
    fs.renameSync(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EXDEV") throw e;
    const tmp = `${to}.ktld-tmp`;
    fs.copyFileSync(from, tmp);
    fs.renameSync(tmp, to);
    fs.rmSync(from, { force: true });
  }
}

/** After the thin-link wrote into `stageDir`: move the changed files into the build dir.
 * The files in place are compared by the hashes the cache keeps (rehashed only if their
 * stat changed), so an unchanged index costs one read of the fresh copy, not two. */
export function publishIndexFiles(tree: KbuildTree, stageDir: string, hashes: HashCache): ThinLinkOutcome {
  const listFile = path.join(stageDir, "vmlinux.thinlto-index");
  const loaded = new Set(
    fs.readFileSync(listFile, "utf8").split("\n").filter(Boolean)
      .map((p) => path.relative(tree.buildDir, path.resolve(tree.buildDir, p.startsWith(stageDir) ? path.relative(stageDir, p) : p))),
  );
  const modules: string[] = [];
  const changed = new Set<string>();
  const seen = new Set<string>();
  tree.layout.publishIndexList(tree, [...loaded]);
  for (const o of tree.objects as readonly LinkObject[]) {
    if (!o.bitcode || seen.has(o.path)) continue;
    seen.add(o.path);
    const staged = path.join(stageDir, indexPath(o.path));
    if (!loaded.has(o.path) && !fs.existsSync(staged)) continue;
    modules.push(o.path);
    for (const f of [indexPath(o.path), importsPath(o.path)]) {
      const from = path.join(stageDir, f);
      const to = path.join(tree.buildDir, f);
      const fresh = hashFile(from);
      if (fresh === null || fresh === hashes.get(to)) continue;
      moveInto(from, to);
      hashes.remember(to, fresh);
      changed.add(o.path);
    }
  }
  return { modules, changed };
}
