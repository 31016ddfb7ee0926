// The daemon process: `ktld start` runs this detached, with its output in <state>/daemon.log.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { parseArgs } from "node:util";
import { KtldError } from "../src/base/errors";
import { DAEMON_OPTIONS, sharedCacheOption } from "../src/options";
import { DaemonInfo, daemonInfoPath, PROTOCOL_VERSION } from "../src/protocol";
import { InstanceLock } from "../src/lock";
import { killAllChildren } from "../src/base/process";
import { StateDir } from "../src/state";
import { Store } from "../src/store";
import { Daemon } from "./daemon";
import { BootOptions, DEFAULT_BOOT_MEM_MIB, DEFAULT_BOOT_TIMEOUT_S } from "../src/boot";

export const DEFAULT_IDLE_TIMEOUT_S = 3 * 3600;

/** `--boot-*` flags as the boot runner takes them (the client checked them). */
function bootOptions(o: Record<string, string | boolean | undefined>): Pick<BootOptions, "run" | "timeoutMs" | "memoryMiB" | "append"> {
  return {
    run: o["boot-run"] ? path.resolve(String(o["boot-run"])) : undefined,
    timeoutMs: Number(o["boot-timeout"] ?? DEFAULT_BOOT_TIMEOUT_S) * 1000,
    memoryMiB: Number(o["boot-mem"] ?? DEFAULT_BOOT_MEM_MIB),
    append: o["boot-append"] ? String(o["boot-append"]) : undefined,
  };
}

async function main(): Promise<void> {
  const { values: o } = parseArgs({
    options: DAEMON_OPTIONS,
  });
  const buildDir = path.resolve(o["build-dir"]!);
  const stateDir = path.resolve(o["state-dir"] ?? path.join(buildDir, ".ktld"));
  const log = (m: string) => process.stdout.write(`${m}\n`);
  fs.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
  fs.chmodSync(stateDir, 0o700);
  // Taking the lock is the test of "already running"; asking first would race (src/lock.ts).
  const state = await StateDir.open(stateDir, buildDir).catch(async (e: unknown) => {
    if (e instanceof KtldError && (await InstanceLock.held(stateDir))) throw new KtldError(`a ktld daemon is already running for ${buildDir}`);
    throw e;
  });
  if (state.reaped) log(`ktld: stopped ${state.reaped} process group(s) a ktld that died had left running`);
  const store = Store.open({ path: state.storePath, log });
  let daemon: Daemon | undefined;
  const exit = (code: number) => {
    void store.close().finally(() => {
      killAllChildren();
      // Our files go before the lock: once it is free, a new daemon may write its own.
      fs.rmSync(daemonInfoPath(stateDir), { force: true });
      state.release();
      process.exit(code);
    });
  };
  try {
    daemon = new Daemon({
      buildDir, state, store,
      jobs: o.jobs ? Number(o.jobs) : os.cpus().length,
      idleTimeoutMs: Number(o["idle-timeout"] ?? DEFAULT_IDLE_TIMEOUT_S) * 1000,
      settleMs: Number(o["settle-ms"] ?? 50),
      log,
      onExit: () => exit(0),
      boot: o.boot || o["boot-run"] ? bootOptions(o) : undefined,
      installModPath: o["install-mod-path"] ? path.resolve(o["install-mod-path"]) : undefined,
      shared: sharedCacheOption(o),
      distcc: o.distcc,
      beExecutor: o["be-executor"],
    });
    await daemon.start();
  } catch (e) {
    log(`ktld daemon: ${(e as Error).message}`);
    exit(2);
    return;
  }
  const info: DaemonInfo = { pid: process.pid, socket: daemon.socketPath, protocol: PROTOCOL_VERSION, buildDir };
  fs.writeFileSync(daemonInfoPath(stateDir), JSON.stringify(info), { mode: 0o600 });
  for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) {
    process.on(sig, () => daemon!.stop().catch((e: unknown) => {
      log(`ktld daemon: stopping failed: ${(e as Error).message}`);
      exit(1);
    }));
  }
}

if (require.main === module) {
  main().catch((e) => {
    process.stdout.write(`ktld daemon: ${(e as Error).message}\n`);
    process.exit(2);
  });
}
