// The compiler and linker a tree was built with, found on PATH and checked against the
// tree's record of them.
import * as fs from "node:fs";
import * as path from "node:path";
import { KtldError } from "./base/errors";
import { querySync } from "./base/process";
import { KbuildTree } from "./kbuild/tree";

export function which(cmd: string, envPath = process.env.PATH ?? ""): string | undefined {
  if (cmd.includes("/")) return fs.existsSync(cmd) ? cmd : undefined;
  for (const dir of envPath.split(":")) {
    if (!dir) continue;
    const p = path.join(dir, cmd);
    try {
      fs.accessSync(p, fs.constants.X_OK);
      return p;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** `clang version 19.1.7` → 190107, as kbuild's CONFIG_CLANG_VERSION. */
export function clangVersionNumber(versionText: string): number | undefined {
  const m = /clang version (\d+)\.(\d+)\.(\d+)/.exec(versionText);
  return m ? Number(m[1]) * 10000 + Number(m[2]) * 100 + Number(m[3]) : undefined;
}

export interface Toolchain {
  readonly clang: string;
  readonly ld: string;
  /** llvm-nm of the same LLVM as ld.lld (kbuild's $(NM) under LLVM=). */
  readonly nm: string;
  /** Identity of the clang binary, part of every BE cache key. */
  readonly clangIdentity: string;
  /** The same clang as another machine would name it: its version line and its size, not
   * where it lies or when it was installed (the shared cache's keys, src/sharedcache.ts). */
  readonly clangPortable: string;
}

/** Finds the tree's clang and ld.lld, or says how to get them. */
export function resolveToolchain(tree: KbuildTree, buildDirArg: string): Toolchain {
  const compilerName = [...tree.units.values()][0].compiler;
  const ldName = tree.vmlinuxLink.ldArgv[0];
  const clang = which(compilerName);
  if (!clang) {
    throw new KtldError(`${compilerName} not found on PATH (${buildDirArg} was built with it): install it (apt-get install ${compilerName}) or put it on PATH`);
  }
  if (!which(ldName)) {
    throw new KtldError(`${ldName} not found on PATH (${buildDirArg} links with it): install it (apt-get install ${ldName.replace(/^ld\.lld/, "lld")}) or put it on PATH`);
  }
  // The archiver of the same LLVM (kbuild's $(AR) under LLVM=; ktld remakes archives with
  // kbuild's recorded commands) and, for BTF, pahole: missing, a link would fail late.
  const arName = ldName.replace(/^ld\.lld/, "llvm-ar");
  if (arName !== ldName && !which(arName)) {
    throw new KtldError(`${arName} not found on PATH (${buildDirArg} makes its archives with it): install it (apt-get install ${arName.replace(/^llvm-ar/, "llvm")}) or put it on PATH`);
  }
  if (tree.config.get("CONFIG_DEBUG_INFO_BTF") === "y" && !which("pahole")) {
    throw new KtldError(`pahole not found on PATH (${buildDirArg} has CONFIG_DEBUG_INFO_BTF, whose link runs it): install it (apt-get install dwarves) or put it on PATH`);
  }
  const r = querySync([clang, "--version"]);
  const version = (r.stdout ?? "").split("\n")[0];
  const want = tree.config.get("CONFIG_CLANG_VERSION");
  const have = clangVersionNumber(version);
  if (want && have !== undefined && String(have) !== want) {
    throw new KtldError(
      `${buildDirArg} was configured with clang ${want} (CONFIG_CLANG_VERSION) but ${compilerName} on PATH is ${have}; rebuild the tree with make ${tree.makeVars.join(" ")} or put the original clang first on PATH`,
    );
  }
  const real = fs.realpathSync(clang);
  const st = fs.statSync(real);
  return { clang, ld: ldName, nm: ldName.replace(/^ld\.lld/, "llvm-nm"), clangIdentity: `${real}:${st.size}:${st.mtimeMs}:${version}`, clangPortable: `${path.basename(real)}:${st.size}:${version}` };
}
