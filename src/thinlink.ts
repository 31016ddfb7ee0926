// ThinLink: one `ld.lld --thinlto-index-only` over every object of vmlinux.
//
// lld rewrites every index file on every thin-link (same bytes, new mtime), so the index
// and imports files are written to a staging dir (--thinlto-prefix-replace) and only those
// whose bytes changed are moved into the build dir: unchanged ones keep their mtimes.
import * as fs from "node:fs";
import * as path from "node:path";
import { importsPath, indexPath, inputArgs, TEMP_SUFFIX } from "./kbuild/names";
import { HashCache, hashFile } from "./base/hash";
import { KbuildTree, LinkObject } from "./kbuild/tree";
import { killPoint } from "./base/killpoint";

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
    const tmp = `${to}${TEMP_SUFFIX}`;
    fs.copyFileSync(from, tmp);
    fs.renameSync(tmp, to);
    fs.rmSync(from, { force: true });
  }
}

/** After the thin-link wrote into `stageDir`: move the changed files into the build dir.
 * The files in place are compared by the hashes the cache keeps (rehashed only if their
 * stat changed), so an unchanged index costs one read of the fresh copy, not two. */
export function publishIndexFiles(tree: KbuildTree, stageDir: string, hashes: HashCache): ThinLinkOutcome {
  const bitcode = (tree.objects as readonly LinkObject[]).filter((o) => o.bitcode).map((o) => o.path);
  const out = publishStaged(tree.buildDir, bitcode, stageDir, path.join(stageDir, "vmlinux.thinlto-index"), hashes);
  tree.layout.publishIndexList(tree, out.loaded);
  return out;
}

/** The core of a publish, for any link target: `units` are its bitcode objects in link
 * order, `listFile` the thin-link's list of those it loaded. */
export function publishStaged(buildDir: string, units: readonly string[], stageDir: string, listFile: string, hashes: HashCache): ThinLinkOutcome & { loaded: string[] } {
  const loaded = new Set(
    fs.readFileSync(listFile, "utf8").split("\n").filter(Boolean)
      .map((p) => path.relative(buildDir, path.resolve(buildDir, p.startsWith(stageDir) ? path.relative(stageDir, p) : p))),
  );
  const modules: string[] = [];
  const changed = new Set<string>();
  const seen = new Set<string>();
  for (const o of units) {
    if (seen.has(o)) continue;
    seen.add(o);
    const staged = path.join(stageDir, indexPath(o));
    if (!loaded.has(o) && !fs.existsSync(staged)) continue;
    modules.push(o);
    for (const f of [indexPath(o), importsPath(o)]) {
      const from = path.join(stageDir, f);
      const to = path.join(buildDir, f);
      const fresh = hashFile(from);
      if (fresh === null || fresh === hashes.get(to)) continue;
      moveInto(from, to);
      killPoint("thin-link:publish");
      hashes.remember(to, fresh);
      changed.add(o);
    }
  }
  return { modules, changed, loaded: [...loaded] };
}
