// The state dir of one build dir (default `<build-dir>/.ktld`, hidden from the kernel's
// .gitignore'd `.*`): the LMDB store, the blob dir, staging space and a lock.
import * as fs from "node:fs";
import * as path from "node:path";
import { BlobDir } from "./blobs";
import { KtldError } from "./base/errors";
import { reapChildrenOf, setChildLedger } from "./base/process";
import { buildDirLockKey, InstanceLock } from "./lock";

export class StateDir {
  readonly blobs: BlobDir;
  private locks: InstanceLock[] = [];
  /** Process groups a ktld that died had left running, killed when the lock was taken. */
  reaped = 0;

  private constructor(readonly dir: string) {
    this.blobs = new BlobDir(path.join(dir, "blobs"));
  }

  get storePath(): string {
    return path.join(this.dir, "store");
  }

  /** The ledger of the process groups ktld runs (src/base/process.ts). */
  get childLedger(): string {
    return path.join(this.dir, "running");
  }

  /** The file hashes' journal beside the store (src/filenotes.ts). */
  get notesPath(): string {
    return path.join(this.dir, "files.log");
  }

  /** Opens the state dir and takes its lock (one ktld process per state dir: a daemon or
   * a one-shot build), and the lock of `buildDir` (one per build dir, whatever the state dir:
   * two processes with different --state-dir on one tree would write the same files). The
   * locks are abstract sockets: the kernel drops them with the process. */
  static async open(dir: string, buildDir?: string): Promise<StateDir> {
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      fs.accessSync(dir, fs.constants.W_OK);
    } catch (e) {
      throw new KtldError(`cannot write ktld's state dir ${dir} (${(e as NodeJS.ErrnoException).code}); make the build dir writable or pass --state-dir DIR`);
    }
    const lock = await InstanceLock.acquire(dir);
    if (!lock) throw new KtldError(`another ktld process (a daemon or a build) is using ${dir}; stop it (ktld stop) or wait for it`);
    const s = new StateDir(dir);
    s.locks.push(lock);
    if (buildDir !== undefined) {
      const tree = await InstanceLock.acquire(buildDirLockKey(buildDir));
      if (!tree) {
        s.release();
        throw new KtldError(`another ktld process (a daemon or a build, with another --state-dir) is using the build dir ${buildDir}; stop it or wait for it`);
      }
      s.locks.push(tree);
    }
    // Nothing of a ktld that died may run beside this one, nor be left half-written.
    s.reaped = reapChildrenOf(s.childLedger);
    setChildLedger(s.childLedger);
    s.blobs.sweepTemps();
    for (const n of fs.readdirSync(dir)) if (/\.tmp-\d+$/.test(n)) fs.rmSync(path.join(dir, n), { force: true });
    return s;
  }

  release(): void {
    for (const l of this.locks) l.release();
    this.locks = [];
  }

  /** An empty directory under the state dir. */
  freshDir(name: string): string {
    const d = path.join(this.dir, name);
    fs.rmSync(d, { recursive: true, force: true });
    fs.mkdirSync(d, { recursive: true });
    return d;
  }
}
