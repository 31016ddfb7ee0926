// The environment kbuild's top Makefile exports (srctree, objtree, KBUILD_LDS, LD, NM, ...),
// which scripts/link-vmlinux.sh, modpost and the initcall generator need. It is captured
// once by asking the tree's own make to run one extra rule, and kept in the state dir.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { NO_ROOM } from "../base/errors";
import { KtldError } from "../base/errors";
import { runProcess } from "../base/process";
import { hashFields, hashFile } from "../base/hash";

/** Variables of the capturing make itself that must not leak into the replayed ones. */
const MAKE_PRIVATE = new Set(["MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", "GNUMAKEFLAGS", "MAKE_TERMOUT", "MAKE_TERMERR"]);

/** The caller's variables kbuild reads from the environment (its build number and time, its
 * flags, LLVM=, ARCH=): another value, and kbuild's environment is captured again. */
const KBUILD_SHELL_VARS = /^(KBUILD_\w+|K(C|A|CPP|RUST)FLAGS|LLVM(_IAS)?|ARCH|CROSS_COMPILE)$/;

export function envKey(buildDir: string, makeVars: readonly string[], callerEnv: NodeJS.ProcessEnv = process.env): string {
  const st = (f: string) => {
    const s = fs.statSync(f, { throwIfNoEntry: false });
    return s ? `${s.size}:${s.mtimeMs}` : "-";
  };
  const shell = Object.entries(callerEnv).filter(([k]) => KBUILD_SHELL_VARS.test(k)).map(([k, v]) => `${k}=${v ?? ""}`).sort();
  return hashFields([
    ...makeVars, hashFile(path.join(buildDir, ".config")) ?? "-", st(path.join(buildDir, "Makefile")),
    st(path.join(buildDir, "include/config/auto.conf")), "environment", ...shell,
  ]);
}

export function parseEnv0(buf: Buffer): Record<string, string> {
  const env: Record<string, string> = {};
  for (const entry of buf.toString("utf8").split("\0")) {
    const eq = entry.indexOf("=");
    if (eq <= 0) continue;
    const k = entry.slice(0, eq);
    if (!MAKE_PRIVATE.has(k)) env[k] = entry.slice(eq + 1);
  }
  return env;
}

/** kbuild's exported environment for this build dir (cached in `stateDir`). */
export async function kbuildEnv(buildDir: string, makeVars: readonly string[], stateDir: string): Promise<Record<string, string>> {
  const key = envKey(buildDir, makeVars);
  const cacheFile = path.join(stateDir, "kbuild-env.json");
  try {
    const cached = JSON.parse(fs.readFileSync(cacheFile, "utf8")) as { key: string; env: Record<string, string> };
    if (cached.key === key) return cached.env;
  } catch {
    // absent or unreadable: capture again
  }
  // Captured in a temp dir of its own: the state dir may be full (then it is not cached).
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "ktld-env-"));
  const envFile = path.join(tmp, "kbuild-env.0");
  const ldFile = path.join(tmp, "kbuild-ldflags-vmlinux");
  // LDFLAGS_vmlinux is exported by the top Makefile for the vmlinux target only.
  // A pattern rule: an explicit one would become the default goal of every sub-make.
  const rule = `ktld-capture-%: ; @env -0 > ${envFile}$(file >${ldFile},$(LDFLAGS_vmlinux))`;
  try {
    const r = await runProcess(["make", "-s", ...makeVars, `--eval=${rule}`, "ktld-capture-env"], { cwd: buildDir, timeoutMs: 10 * 60_000 });
    if (r.code !== 0) {
      const why = r.timedOut ? "make did not finish in 10 minutes" : (r.error ?? r.output).trim().split("\n").pop();
      throw new KtldError(`cannot read kbuild's environment with make in ${buildDir}: ${why}`);
    }
    const env = parseEnv0(fs.readFileSync(envFile));
    env.LDFLAGS_vmlinux = fs.readFileSync(ldFile, "utf8").replace(/\n$/, "");
    try {
      fs.writeFileSync(cacheFile, JSON.stringify({ key, env }));
    } catch (e) {
      fs.rmSync(cacheFile, { force: true });
      if (!NO_ROOM.has((e as NodeJS.ErrnoException).code ?? "")) throw e;
    }
    return env;
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
