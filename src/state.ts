// The state dir of one build dir (default `<build-dir>/.ktld`, hidden from the kernel's
// .gitignore'd `.*`): the LMDB store, the blob dir, staging space and a lock.
import { createHash } from "node:crypto";
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
    s.clearTmpfs();
    sweepTmpfs();
    for (const n of fs.readdirSync(dir)) if (/\.tmp-\d+$/.test(n)) fs.rmSync(path.join(dir, n), { force: true });
    return s;
  }

  release(): void {
    if (this.locks.length) this.clearTmpfs();
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

  /** Empties this state dir's space on tmpfs (the lock is held: nobody else uses it). */
  private clearTmpfs(): void {
    const root = this.tmpfsDir;
    try {
      if (root) fs.rmSync(root, { recursive: true, force: true });
    } catch {
      // Not ours (another user's name): stagingDir does not use it either.
    }
  }

  /** This state dir's space on tmpfs (see stagingDir), or undefined where there is none. */
  get tmpfsDir(): string | undefined {
    return tmpfsRoot(this.dir);
  }

  /** An empty directory for a thin-link's outputs: one small file per unit (1,039 index and
   * 1,039 imports files on the developer fixture), of which a build keeps only those whose
   * bytes changed. On ext4 each file created waits on the journal, which a link's hundreds of
   * MB of writes keep busy: 0.8-1.4 s of system time for the 2,000 files after 600 MB were
   * written, under 0.1 s on tmpfs (docs/benchmarks.md). So on tmpfs (`/dev/shm`) where it has room, else under the state dir.
   * `KTLD_STAGE_TMPFS=0`: always under the state dir. */
  stagingDir(name: string): string {
    const root = process.env.KTLD_STAGE_TMPFS === "0" ? undefined : this.tmpfsDir;
    if (root) {
      try {
        fs.mkdirSync(root, { recursive: true, mode: 0o700 });
        const st = fs.lstatSync(root);
        if (st.isDirectory() && st.uid === process.getuid?.()) {
          // Whose it is, for sweepTmpfs when the state dir is gone.
          fs.writeFileSync(path.join(root, OWNER_FILE), this.dir);
          const d = path.join(root, name);
          fs.rmSync(d, { recursive: true, force: true });
          fs.mkdirSync(d);
          return d;
        }
      } catch {
        // Another user's, or no room: the state dir.
      }
    }
    return this.freshDir(name);
  }
}

/** In a tmpfs root: the state dir it is for. */
const OWNER_FILE = "state-dir";

/** Removes the tmpfs roots of this user whose state dir no longer exists (a ktld killed before
 * it let go of a state dir that was then deleted: a test's, a removed tree's). */
export function sweepTmpfs(shm = "/dev/shm"): void {
  const mine = `ktld-${process.getuid?.() ?? 0}-`;
  let names: string[];
  try {
    names = fs.readdirSync(shm).filter((n) => n.startsWith(mine));
  } catch {
    return;
  }
  for (const n of names) {
    try {
      const owner = fs.readFileSync(path.join(shm, n, OWNER_FILE), "utf8");
      if (!fs.existsSync(owner)) fs.rmSync(path.join(shm, n), { recursive: true, force: true });
    } catch {
      // No owner file yet, or not ours: left alone.
    }
  }
}

/** Free space a thin-link's outputs may take on tmpfs, with room to spare. */
const TMPFS_MIN_FREE = 256 * 1024 * 1024;

/** `/dev/shm/ktld-<uid>-<hash of the state dir>` when /dev/shm is a tmpfs with room: one per
 * state dir, so that the state dir's lock covers it (a ktld that died leaves it to the next
 * one, which empties it). */
export function tmpfsRoot(stateDir: string, shm = "/dev/shm"): string | undefined {
  try {
    const fsType = fs.statfsSync(shm);
    // TMPFS_MAGIC
    if (fsType.type !== 0x01021994 || fsType.bavail * fsType.bsize < TMPFS_MIN_FREE) return undefined;
  } catch {
    return undefined;
  }
  const key = createHash("sha256").update(path.resolve(stateDir)).digest("hex").slice(0, 16);
  return path.join(shm, `ktld-${process.getuid?.() ?? 0}-${key}`);
}
