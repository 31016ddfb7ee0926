// The single-instance lock: an abstract unix socket named after the state dir. The kernel
// releases it the moment the process dies (even by kill -9), so a stale pid file or socket
// left behind can never block a new daemon, and two daemons can never both hold it.
//
// Whether the lock is held is asked by connecting to it, never by taking it: a probe that
// took the lock for a moment made a daemon starting at that moment believe another one ran
// (the start race of `ktld start`, which polls while its daemon starts).
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";

export function lockName(stateDir: string): string {
  return `\0ktld-${createHash("sha256").update(stateDir).digest("hex").slice(0, 32)}`;
}

/** The lock of a build dir (one ktld process per build dir, whatever its state dir): named
 * after the dir's real path, so that two spellings of it are one lock. */
export function buildDirLockKey(buildDir: string): string {
  let real: string;
  try {
    real = fs.realpathSync(buildDir);
  } catch {
    real = path.resolve(buildDir);
  }
  return `build-dir:${real}`;
}

export class InstanceLock {
  private constructor(private readonly server: net.Server) {}

  /** Takes the lock (of a state dir, or a buildDirLockKey), or resolves null if another live
   * process holds it. */
  static acquire(stateDir: string): Promise<InstanceLock | null> {
    return new Promise((resolve, reject) => {
      const server = net.createServer((s) => s.destroy());
      server.once("error", (e: NodeJS.ErrnoException) => (e.code === "EADDRINUSE" ? resolve(null) : reject(e)));
      server.listen(lockName(stateDir), () => {
        server.unref();
        resolve(new InstanceLock(server));
      });
    });
  }

  /** Whether some live process holds the lock of `stateDir`: a connection to it is
   * accepted (and closed at once by the holder); nobody listening refuses it. */
  static held(stateDir: string): Promise<boolean> {
    return new Promise((resolve) => {
      const s = net.connect(lockName(stateDir));
      const done = (held: boolean) => {
        s.destroy();
        resolve(held);
      };
      s.once("connect", () => done(true));
      s.once("error", (e: NodeJS.ErrnoException) => done(e.code !== "ECONNREFUSED" && e.code !== "ENOENT"));
    });
  }

  release(): void {
    this.server.close();
  }
}
