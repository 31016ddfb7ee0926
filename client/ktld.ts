#!/usr/bin/env node
// The `ktld` command.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { InstanceLock } from "../src/lock";
import { DAEMON_OPTIONS, sharedCacheOption } from "../src/options";
// What only some commands need (the build engine, lmdb, piscina) is loaded by those: a
// client that asks the daemon something starts in a fraction of the time.
import { DEFAULT_CACHE_CAP } from "../src/blobs";
import { DEFAULT_BOOT_MEM_MIB, DEFAULT_BOOT_TIMEOUT_S } from "../src/boot";
import { clientCommand } from "./commands";
import { connectDaemon, startDaemon, stopDaemon } from "./daemonctl";
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE, KtldError } from "../src/base/errors";
import { jsonReport, summaryTable } from "../src/report";
import { sharedCacheText } from "./views";
import { distccConfig } from "../src/distcc";
import type { SharedCacheState } from "../src/sharedcache";

const VERSION = "0.1.0";

const USAGE = `usage: ktld <command> [options]

commands:
  start              start the daemon for the build dir: it watches the sources and
                     keeps vmlinux fresh after every save
  stop               stop it
  status             what the daemon is doing and did (--json for a script)
  build [--wait]     re-link vmlinux of a built Clang ThinLTO tree: thin-link, the BE
                     jobs whose inputs changed (others from the cache), link; with a
                     daemon running, it asks the daemon (after every save so far)
  boot               boot the build dir's vmlinux once in qemu (busybox initramfs with the
                     tree's modules; --boot-run SCRIPT runs SCRIPT inside: its exit status
                     is the verdict; --console shows the console)
  why OBJECT         why OBJECT was (or was not) rebuilt by the daemon's last builds; vmlinux: its thin-link and link
  log [-f]           the daemon's log (-f: follow)
  cache stats        entries, size and cap of the BE cache
  cache gc           evict least-recently-used natives down to the cap
  cache clear        forget every cached native and record (the next build compiles all)

options:
  --build-dir DIR    the kernel build dir (O=, or the source tree); default: .
  --state-dir DIR    where ktld keeps its store and cache; default: <build-dir>/.ktld
  -j, --jobs N       parallel BE compiles; default: the number of CPUs (${os.cpus().length})
  --json             print one JSON object instead of lines and a table
  --max-size SIZE    cache cap, e.g. 2G or 500M; default: 2G
  --idle-timeout S   start: the daemon exits after S seconds without work (default 10800)
  --boot             start: boot every fresh kernel in qemu and show the verdict in status
  --boot-run SCRIPT  start, boot: run SCRIPT inside the booted kernel (implies --boot)
  --boot-timeout S   no verdict after S seconds is a timeout (default ${DEFAULT_BOOT_TIMEOUT_S})
  --boot-mem MIB     the guest's memory (default ${DEFAULT_BOOT_MEM_MIB})
  --boot-append ARGS extra kernel arguments
  --install-mod-path DIR  start, build: install the kernel modules into DIR after each
                     change, as make modules_install INSTALL_MOD_PATH=DIR does (with depmod)
  --shared-cache URL start, build: a team's native cache on a Redis server
                     (redis://HOST[:PORT]) behind the local one, read-only
  --shared-cache-write  start, build: also store the natives compiled here (CI)
  --distcc           start: FE replays through distcc (DISTCC_HOSTS; -j sized by its slots)
  --be-executor CMD  start, build: BE jobs as one DTLTO JSON batch to CMD BATCH.json (reference:
                     node dist/src/beexec.js, each job in an empty dir with its listed inputs)
  -h, --help         this help
  --version          ktld's version
`;

const COMMON = "  --build-dir DIR    the kernel build dir (default .)\n  --state-dir DIR    ktld's state (default <build-dir>/.ktld)\n";
const EXITS = "exit status: 0 ok, 1 failed, 2 usage or environment error\n";

/** `ktld <command> --help`. */
const COMMAND_HELP: Record<string, string> = {
  start: `usage: ktld start [--build-dir DIR] [-j N] [--idle-timeout SECONDS] [--boot [--boot-run SCRIPT]]\nStarts the daemon for DIR (detached; log in <state>/daemon.log) and returns once it answers.\nA daemon already running is reported, one of another protocol version replaced.\n${COMMON}  -j N               parallel jobs (default: CPUs)\n  --idle-timeout S   exit after S seconds without work (default 10800; 0: never)\n  --boot             boot every fresh kernel in qemu (see ktld boot --help); a newer build cancels a boot\n  --boot-run SCRIPT  run SCRIPT in each boot: its exit status is the verdict\n${EXITS}`,
  stop: `usage: ktld stop [--build-dir DIR]\nStops the daemon of DIR (after cancelling a running build).\n${COMMON}${EXITS}`,
  status: `usage: ktld status [--build-dir DIR] [--json]\nOn a terminal: the live dashboard (q quit, b build now, up/down + enter: why each job ran, ? help).\nOtherwise a plain-text snapshot; --json: the object documented in README.md.\n${COMMON}${EXITS}`,
  build: `usage: ktld build [--build-dir DIR] [-j N] [--json] [--wait]\nWith a daemon running: waits for the build that covers every save so far.\nWithout: thin-link, BE of the modules whose inputs changed, link of vmlinux (one shot).\n--wait insists on a daemon.\n${COMMON}  -j N               parallel BE jobs (default: CPUs)\n  --json             one JSON object (see README.md)\n${EXITS}`,
  why: `usage: ktld why OBJECT [--build-dir DIR] [--json]\nWhy OBJECT (e.g. kernel/fork.o) was rebuilt by the daemon's last builds, or why not.\n${COMMON}${EXITS}`,
  log: `usage: ktld log [-f] [--boot] [--build-dir DIR]\nThe daemon's recent log; -f follows it; --boot: the console of the daemon's last boot.\n${COMMON}${EXITS}`,
  boot: `usage: ktld boot [--build-dir DIR] [--boot-run SCRIPT] [--console] [--json] [--boot-timeout S] [--boot-mem MIB] [--boot-append ARGS]\nBoots DIR's vmlinux once in qemu (KVM when /dev/kvm is usable, else TCG) with a busybox initramfs\n(Debian's busybox-static) holding the tree's modules and SCRIPT; the verdict: pass, fail (SCRIPT's\nexit status), panic, oops (an oops/BUG/WARNING line), timeout.\n${COMMON}${EXITS}`,
  cache: `usage: ktld cache stats|gc|clear [--build-dir DIR] [--max-size SIZE] [--json]\nstats: entries and size; gc: evict least-recently-used natives down to SIZE (default 2G);\nclear: forget every cached native and record (needs the daemon stopped).\n${COMMON}${EXITS}`,
};

/** The --boot-* flags, checked, as the daemon takes them. */
function bootArgs(o: { "boot-run"?: string; "boot-timeout"?: string; "boot-mem"?: string; "boot-append"?: string }): string[] {
  const args: string[] = [];
  if (o["boot-run"]) {
    if (!fs.existsSync(o["boot-run"])) throw new KtldError(`--boot-run ${o["boot-run"]}: no such file (a script to run inside the booted kernel)`);
    args.push("--boot-run", path.resolve(o["boot-run"]));
  }
  for (const k of ["boot-timeout", "boot-mem"] as const) {
    const v = o[k];
    if (v === undefined) continue;
    if (!(Number(v) > 0)) throw new KtldError(`bad --${k} '${v}': give a positive number (${k === "boot-mem" ? "MiB" : "seconds"})`);
    args.push(`--${k}`, v);
  }
  if (o["boot-append"]) args.push("--boot-append", o["boot-append"]);
  return args;
}

function parseSize(s: string): number {
  const m = /^(\d+(?:\.\d+)?)([KMG]?)i?B?$/i.exec(s.trim());
  if (!m) throw new KtldError(`bad size '${s}': use a number with K, M or G (e.g. 2G)`);
  const mult = { "": 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3 }[m[2].toUpperCase() as "" | "K" | "M" | "G"];
  return Math.round(Number(m[1]) * mult);
}

const mib = (b: number) => `${(b / 1024 ** 2).toFixed(1)} MiB`;

async function main(argv: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        ...DAEMON_OPTIONS,
        json: { type: "boolean", default: false },
        "max-size": { type: "string" },
        wait: { type: "boolean", default: false },
        follow: { type: "boolean", short: "f", default: false },
        console: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
        version: { type: "boolean", default: false },
      },
    });
  } catch (e) {
    process.stderr.write(`ktld: ${(e as Error).message}\n${USAGE}`);
    return EXIT_USAGE;
  }
  const { values: o, positionals: pos } = parsed;
  if (o.version) {
    process.stdout.write(`ktld ${VERSION}\n`);
    return EXIT_OK;
  }
  if (o.help && pos.length > 0 && COMMAND_HELP[pos[0]]) {
    process.stdout.write(COMMAND_HELP[pos[0]]);
    return EXIT_OK;
  }
  if (o.help || pos.length === 0) {
    (o.help ? process.stdout : process.stderr).write(USAGE);
    return o.help ? EXIT_OK : EXIT_USAGE;
  }
  const buildDir = o["build-dir"]!;
  const jobs = o.jobs === undefined ? undefined : Number.parseInt(o.jobs, 10);
  if (jobs !== undefined && !(jobs > 0)) throw new KtldError(`bad -j '${o.jobs}': give a positive number of jobs`);
  const cap = o["max-size"] ? parseSize(o["max-size"]) : DEFAULT_CACHE_CAP;

  const stateDir = path.resolve(o["state-dir"] ?? path.join(path.resolve(buildDir), ".ktld"));
  const noDaemon = () => new KtldError(`no daemon is running for ${path.resolve(buildDir)}; start one with: ktld start --build-dir ${buildDir}`);

  if (pos[0] === "start" && pos.length === 1) {
    if (!fs.existsSync(buildDir)) throw new KtldError(`build dir ${buildDir} does not exist; pass --build-dir DIR (the O= dir, or the source tree for in-tree builds)`);
    const args: string[] = [];
    if (jobs) args.push("-j", String(jobs));
    if (o["idle-timeout"]) args.push("--idle-timeout", o["idle-timeout"]);
    if (o["settle-ms"]) args.push("--settle-ms", o["settle-ms"]);
    if (o.boot || o["boot-run"]) args.push("--boot", ...bootArgs(o));
    if (o["install-mod-path"]) args.push("--install-mod-path", path.resolve(o["install-mod-path"]));
    const shared = sharedCacheOption(o);
    if (shared) args.push("--shared-cache", shared.url, ...(shared.write ? ["--shared-cache-write"] : []));
    if (o.distcc) {
      const cfg = distccConfig(process.env, "option");
      if (typeof cfg === "string") throw new KtldError(cfg);
      args.push("--distcc");
    }
    if (o["be-executor"]) args.push("--be-executor", o["be-executor"]);
    const r = await startDaemon({ buildDir: path.resolve(buildDir), stateDir, args });
    process.stdout.write(r.started
      ? `ktld: daemon started for ${path.resolve(buildDir)} (pid ${r.pid}); log: ${r.log}\n`
      : `ktld: a daemon is already running for ${path.resolve(buildDir)} (pid ${r.pid})\n`);
    return EXIT_OK;
  }
  if (pos[0] === "stop" && pos.length === 1) {
    const pid = await stopDaemon(stateDir);
    process.stdout.write(pid ? `ktld: daemon ${pid} stopped\n` : `ktld: no daemon is running for ${path.resolve(buildDir)}\n`);
    return EXIT_OK;
  }
  if (pos[0] === "boot" && pos.length === 1) {
    bootArgs(o);
    const { boot, bootJson } = await import("../src/boot");
    if (!o.json) process.stdout.write(`ktld: booting ${path.join(path.resolve(buildDir), "vmlinux")}${o["boot-run"] ? ` to run ${o["boot-run"]}` : ""}\n`);
    const r = await boot({
      buildDir: path.resolve(buildDir), workDir: path.join(stateDir, "boot-once"), run: o["boot-run"] ? path.resolve(o["boot-run"]) : undefined,
      timeoutMs: Number(o["boot-timeout"] ?? DEFAULT_BOOT_TIMEOUT_S) * 1000, memoryMiB: Number(o["boot-mem"] ?? DEFAULT_BOOT_MEM_MIB), append: o["boot-append"],
      onLine: o.console && !o.json ? (l) => process.stdout.write(`${l}\n`) : undefined,
    });
    if (o.json) process.stdout.write(`${JSON.stringify({ ...bootJson(r), console: r.consoleFile })}\n`);
    else {
      if (!o.console && !r.ok) process.stdout.write(`${r.log.slice(-15).map((l) => `  | ${l}`).join("\n")}\n`);
      process.stdout.write(`ktld: boot ${r.verdict} in ${(r.ms / 1000).toFixed(1)} s (${r.accel.toUpperCase()}): ${r.detail}; console: ${r.consoleFile}\n`);
    }
    return r.ok ? EXIT_OK : EXIT_FAILED;
  }
  if (pos[0] === "log" && o.boot) {
    const file = path.join(stateDir, "boot", "console.log");
    if (!fs.existsSync(file)) throw new KtldError(`no boot console yet in ${path.dirname(file)}: start the daemon with --boot`);
    process.stdout.write(fs.readFileSync(file, "utf8").replace(/\n?$/, "\n"));
    return EXIT_OK;
  }
  if (["status", "why", "log"].includes(pos[0])) {
    const c = await connectDaemon(stateDir);
    if (!c) throw noDaemon();
    try {
      return await clientCommand(c, pos, o.json!, o.follow!);
    } finally {
      c.close();
    }
  }

  if (pos[0] === "build" && pos.length === 1) {
    const out = o.json ? process.stderr : process.stdout;
    const daemon = await connectDaemon(stateDir);
    const shared = sharedCacheOption(o);
    if (daemon && (o["install-mod-path"] || shared || o["be-executor"])) {
      daemon.close();
      const opt = o["install-mod-path"] ? `--install-mod-path ${o["install-mod-path"]}` : shared ? `--shared-cache ${shared.url}` : `--be-executor ${o["be-executor"]}`;
      throw new KtldError(`a daemon is running for ${path.resolve(buildDir)}: ${opt.split(" ")[0]} belongs to it (ktld stop, then ktld start ${opt})`);
    }
    if (daemon) {
      const res = await daemon.request("build");
      daemon.close();
      if (!res.ok) throw new KtldError(`the daemon could not build: ${res.error}`);
      const report = res.result;
      if (o.json) process.stdout.write(`${JSON.stringify(report)}\n`);
      else {
        if (!report.ok && report.diagnostics) process.stderr.write(`${report.diagnostics.trimEnd()}\n`);
        process.stdout.write(summaryTable(report));
      }
      return report.ok ? EXIT_OK : EXIT_FAILED;
    }
    if (o.wait) throw noDaemon();
    const { buildOnce } = await import("../src/build");
    const report = await buildOnce({
      buildDir, stateDir: o["state-dir"], jobs, cacheCap: cap, log: (line) => out.write(`${line}\n`),
      installModPath: o["install-mod-path"] ? path.resolve(o["install-mod-path"]) : undefined,
      shared, beExecutor: o["be-executor"],
    });
    if (o.json) process.stdout.write(`${JSON.stringify(jsonReport(report))}\n`);
    else {
      if (!report.ok && report.diagnostics) process.stderr.write(`${report.diagnostics.trimEnd()}\n`);
      process.stdout.write(summaryTable(jsonReport(report)));
    }
    return report.ok ? EXIT_OK : EXIT_FAILED;
  }

  if (pos[0] === "cache" && pos.length === 2 && ["stats", "gc", "clear"].includes(pos[1])) {
    if (pos[1] !== "clear" && (await InstanceLock.held(stateDir))) {
      const c = await connectDaemon(stateDir);
      if (c) {
        const r = await c.request(pos[1] === "gc" ? "cache-gc" : "cache-stats", { cap });
        c.close();
        if (!r.ok) throw new KtldError(r.error ?? "the daemon failed to answer");
        const v = r.result as { entries?: number; bytes: number; blobs?: number; evicted?: number; hits?: { local: number; shared: number }; shared?: SharedCacheState | null };
        process.stdout.write(o.json ? `${JSON.stringify(v)}\n` : pos[1] === "gc"
          ? `evicted ${v.evicted} entries; cache now ${mib(v.bytes)} (cap ${mib(cap)})\n`
          : `entries ${v.entries}\nnatives ${v.blobs} (${mib(v.bytes)})\ncap     ${mib(cap)}\nhits    ${v.hits?.local ?? 0} local, ${v.hits?.shared ?? 0} shared\n${v.shared ? `${sharedCacheText(v.shared)}\n` : ""}`);
        return EXIT_OK;
      }
    }
    if (await InstanceLock.held(stateDir)) throw new KtldError(`a daemon is running for ${path.resolve(buildDir)}: stop it first (ktld stop --build-dir ${buildDir})`);
    const [{ StateDir }, { Store }, { NativeCache }] = await Promise.all([import("../src/state"), import("../src/store"), import("../src/cache")]);
    const state = await StateDir.open(stateDir);
    const store = Store.open({ path: state.storePath, log: (m) => process.stderr.write(`${m}\n`) });
    const cache = new NativeCache(store, state.blobs, state.notesPath);
    try {
      if (pos[1] === "gc") {
        const r = await cache.collectGarbage(cap);
        process.stdout.write(o.json ? `${JSON.stringify(r)}\n` : `evicted ${r.evicted} entries; cache now ${mib(r.bytes)} (cap ${mib(cap)})\n`);
      } else if (pos[1] === "clear") {
        const gone = await cache.clear();
        process.stdout.write(o.json ? `${JSON.stringify(gone)}\n` : `cleared ${gone.cleared} natives (${mib(gone.bytes)})\n`);
      } else {
        const st = cache.stats();
        // `modules`: the old name of `units`, kept one more release.
        const hits = store.getMeta("hits") ?? { local: 0, shared: 0 };
        const stats = { ...st, cap, modules: st.units, hits };
        process.stdout.write(o.json ? `${JSON.stringify(stats)}\n`
          : `entries ${st.entries}\nnatives ${st.blobs} (${mib(st.bytes)})\ncap     ${mib(cap)}\nunits   ${st.units} tracked\nhits    ${hits.local} local, ${hits.shared} shared\n`);
      }
    } finally {
      await store.close();
      state.release();
    }
    return EXIT_OK;
  }
  process.stderr.write(`ktld: unknown command '${pos.join(" ")}'\n${USAGE}`);
  return EXIT_USAGE;
}

/** Exits once stdout and stderr have taken everything written to them: a pipe takes a
 * large `status --json` in pieces, and process.exit() would cut it short (at 219,264 bytes
 * here: found when a developer-fixture history outgrew it). */
function exitFlushed(code: number): void {
  process.stdout.write("", () => process.stderr.write("", () => process.exit(code)));
}

main(process.argv.slice(2)).then(
  (code) => exitFlushed(code),
  (e) => {
    if (e instanceof KtldError) {
      process.stderr.write(`ktld: ${e.message}\n`);
      exitFlushed(e.exitCode);
      return;
    }
    process.stderr.write(`ktld: internal error: ${(e as Error).stack ?? e}\n`);
    exitFlushed(EXIT_USAGE);
  },
);
