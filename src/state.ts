// The state dir of one build dir (default `<build-dir>/.ktld`, hidden from the kernel's
// .gitignore'd `.*`): the LMDB store, the blob dir, staging space and a lock.
import * as fs from "node:fs";
import * as path from "node:path";
import { BlobDir } from "./blobs";
import { KtldError } from "./errors";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export class StateDir {
  readonly blobs: BlobDir;
  private locked = false;

  private constructor(readonly dir: string) {
    this.blobs = new BlobDir(path.join(dir, "blobs"));
  }

  get storePath(): string {
    return path.join(this.dir, "store");
  }

  private get lockPath(): string {
    return path.join(this.dir, "build.lock");
  }

  /** Opens the state dir and takes the build lock (one build per build dir at a time). */
  static open(dir: string): StateDir {
    try {
      fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
      fs.accessSync(dir, fs.constants.W_OK);
    } catch (e) {
      throw new KtldError(`cannot write ktld's state dir ${dir} (${(e as NodeJS.ErrnoException).code}); make the build dir writable or pass --state-dir DIR`);
    }
    const s = new StateDir(dir);
    s.lock();
    return s;
  }

  private lock(): void {
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        fs.writeFileSync(this.lockPath, `${process.pid}\n`, { flag: "wx", mode: 0o600 });
        this.locked = true;
        return;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
        const pid = Number.parseInt(fs.readFileSync(this.lockPath, "utf8"), 10);
        if (Number.isFinite(pid) && pid !== process.pid && alive(pid)) {
          throw new KtldError(`another ktld (pid ${pid}) is building in this build dir; wait for it or stop it`);
        }
        fs.rmSync(this.lockPath, { force: true }); // left by a process that died
      }
    }
    throw new KtldError(`cannot take the lock ${this.lockPath}`);
  }

  release(): void {
    if (this.locked) fs.rmSync(this.lockPath, { force: true });
    this.locked = false;
  }

  /** An empty directory under the state dir. */
  freshDir(name: string): string {
    const d = path.join(this.dir, name);
    fs.rmSync(d, { recursive: true, force: true });
    fs.mkdirSync(d, { recursive: true });
    return d;
  }
}
