// FE replays through distcc: which compiles go out, how their command changes, and what a
// failure of distcc itself (not of the compile) looks like. Pure planning; the session runs
// the jobs.
//
// distcc (3.4, plain mode) preprocesses locally and compiles the `.i` remotely. Two of its
// habits break kernel compiles, and one changes their output:
// - kbuild passes `-Werror=unused-command-line-argument` and `-fmacro-prefix-map=...`; the
//   remote compile of preprocessed text does not use the prefix map, so clang fails it, and
//   distcc quietly compiles locally instead. `-Wno-unused-command-line-argument` after
//   kbuild's flags lets the remote compile succeed (the bitcode is the same: the flag only
//   silences a diagnostic).
// - distcc adds `-target <its own host triple>` to clang's command unless told not to
//   (DISTCC_NO_REWRITE_CROSS): that overrides kbuild's `--target=x86_64-linux-gnu` and the
//   bitcode's triple changes (x86_64-pc-linux-gnu), so ktld sets it.
// - With `-g` and DWARF 5, a compile of preprocessed text has no source files to take the
//   MD5 checksums of `.debug_line`'s file entries from: the bitcode differs from a local
//   compile in those checksums alone. BE keys hash the bitcode, so they stay right; vmlinux
//   then differs from a local build in its `.debug_line` only (docs/distributed.md).
import { splitCommands } from "./base/shell";
import { COMPILER_WRAPPERS } from "./kbuild/tree";
import * as path from "node:path";

/** How ktld sends FE replays through distcc. */
export interface DistccConfig {
  /** The distcc binary (as kbuild recorded it, or `distcc` for --distcc). */
  readonly distcc: string;
  /** DISTCC_HOSTS, as given. */
  readonly hosts: string;
  /** Concurrent compiles the hosts take (the FE's -j). */
  readonly slots: number;
  /** Why distcc is used: "recorded" (kbuild's .cmd files run through it) or "option" (--distcc). */
  readonly source: "recorded" | "option";
}

/** The flag appended to a remote compile's command (see above). */
export const DISTCC_TRAP_FLAG = "-Wno-unused-command-line-argument";

/** distcc's environment for ktld's jobs: no silent local fallback, kbuild's target kept. */
export function distccEnv(cfg: DistccConfig): Record<string, string> {
  return { DISTCC_HOSTS: cfg.hosts, DISTCC_FALLBACK: "0", DISTCC_NO_REWRITE_CROSS: "1" };
}

/** The concurrent compiles a DISTCC_HOSTS line offers: each host's `/LIMIT`, else distcc's
 * defaults (2 for localhost, 4 for a remote host). Options after a comma (`,lzo`, `,cpp`)
 * and `--randomize`-style words are skipped. */
export function distccSlots(hosts: string): number {
  let n = 0;
  for (const word of hosts.split(/\s+/).filter(Boolean)) {
    if (word.startsWith("-")) continue;
    const spec = word.split(",")[0];
    const limit = /\/(\d+)$/.exec(spec);
    if (limit) n += Number(limit[1]);
    else n += /^localhost\b/.test(spec) ? 2 : 4;
  }
  return n;
}

/** DISTCC_HOSTS checked: a config, or the one line that says what is missing. */
export function distccConfig(env: NodeJS.ProcessEnv, source: DistccConfig["source"], recordedDistcc?: string): DistccConfig | string {
  const hosts = env.DISTCC_HOSTS?.trim();
  if (!hosts) {
    return source === "option"
      ? "--distcc needs DISTCC_HOSTS (say DISTCC_HOSTS='buildbox/8 buildbox2/8') in ktld start's environment"
      : "kbuild compiled through distcc but DISTCC_HOSTS is not set in ktld's environment: FE replays run here (set DISTCC_HOSTS, say 'buildbox/8', before ktld start to send them out)";
  }
  const slots = distccSlots(hosts);
  if (slots === 0) return `DISTCC_HOSTS='${hosts}' names no host`;
  return { distcc: recordedDistcc ?? "distcc", hosts, slots, source };
}

/** The distcc kbuild's compiles were recorded with (`make CC="distcc clang-19"`), if any. */
export function recordedDistcc(wrapper: string | undefined): string | undefined {
  return wrapper && path.basename(wrapper) === "distcc" ? wrapper : undefined;
}

export interface FrontendRoute {
  /** The shell command to run. */
  readonly command: string;
  /** It goes through distcc. */
  readonly remote: boolean;
  /** Why it runs where it does (for `ktld why`). */
  readonly why: string;
}

/** Where one FE replay runs, and its command there. `command` is kbuild's recorded compile
 * (possibly with a wrapper in front); `source` the file it compiles. Without `cfg` the
 * command is kbuild's, unchanged. */
export function routeFrontend(command: string, source: string | undefined, cfg: DistccConfig | undefined): FrontendRoute {
  if (!cfg) return { command, remote: false, why: "local" };
  const bare = stripWrapper(command);
  if (!source || !/\.c$/.test(source)) return { command: bare, remote: false, why: `${source ?? "no source"}: distcc sends C compiles only, this one runs here` };
  if (splitCommands(bare).length !== 1) return { command: bare, remote: false, why: "more than one command in kbuild's rule: runs here" };
  return { command: `${cfg.distcc} ${bare} ${DISTCC_TRAP_FLAG}`, remote: true, why: `through ${path.basename(cfg.distcc)} (${cfg.hosts})` };
}

/** kbuild's command without a compiler wrapper in front of it. */
export function stripWrapper(command: string): string {
  const m = /^\s*(\S+)\s+/.exec(command);
  return m && COMPILER_WRAPPERS.has(path.basename(m[1])) ? command.slice(m[0].length) : command;
}

/** distcc's own failures (its exit codes 100-128: no host, connection, protocol, a remote
 * compile it would have retried here), as opposed to the compiler's. */
export function isDistccFailure(code: number | null): boolean {
  return code !== null && code >= 100 && code <= 128;
}
