// Watching the tree with chokidar: the directories the objects' sources and headers live
// in (depth 0 each, never the whole tree), filtered to the files that can matter.
import { FSWatcher, watch } from "chokidar";
import * as fs from "node:fs";
import * as path from "node:path";
import { KBUILD_FILE } from "../src/graph";
import type { WatchKind } from "../src/session";

const INTERESTING = /\.(c|h|S|tbl)$/;

/** Whether a file name can matter to the build (editor swap/backup files cannot). */
export function interestingName(name: string, explicit: ReadonlySet<string>, full: string): boolean {
  if (explicit.has(full)) return true;
  if (name.startsWith(".#") || name.endsWith("~") || name.endsWith(".swp") || name.endsWith(".swx")) return false;
  if (KBUILD_FILE.test(name)) return true;
  if (name.startsWith(".")) return false;
  return INTERESTING.test(name) && !name.endsWith(".thinlto.bc");
}

export interface WatcherOptions {
  readonly dirs: readonly string[];
  /** Files watched whatever their name (.incbin payloads). */
  readonly files: ReadonlySet<string>;
  readonly cookieDir: string;
  readonly onChange: (file: string, kind: WatchKind) => void;
  readonly log: (msg: string) => void;
  /** Called when watching fell back to polling (inotify exhausted). */
  readonly onDegraded: (why: string) => void;
  readonly polling?: boolean;
}

/** Cookie names are unique in the process: two watchers overlap while one replaces the other. */
let cookieSeq = 0;

export class TreeWatcher {
  private watcher?: FSWatcher;
  private readonly cookieWaiters = new Map<string, () => void>();
  polling: boolean;

  constructor(private readonly opts: WatcherOptions) {
    this.polling = opts.polling ?? false;
    fs.mkdirSync(opts.cookieDir, { recursive: true });
  }

  async start(): Promise<void> {
    const dirs = new Set([...this.opts.dirs, this.opts.cookieDir]);
    const w = watch([...dirs], {
      ignoreInitial: true,
      depth: 0,
      atomic: true,
      usePolling: this.polling,
      interval: 500,
      binaryInterval: 500,
      ignored: (p: string) => !dirs.has(p) && !p.startsWith(this.opts.cookieDir + "/") && !interestingName(path.basename(p), this.opts.files, p),
    });
    this.watcher = w;
    const seen = (kind: WatchKind) => (p: string) => {
      if (p.startsWith(this.opts.cookieDir + "/")) {
        this.cookieWaiters.get(p)?.();
        return;
      }
      this.opts.onChange(p, kind);
    };
    w.on("add", seen("add"));
    w.on("change", seen("change"));
    w.on("unlink", seen("unlink"));
    w.on("error", (e: unknown) => this.onError(e as NodeJS.ErrnoException));
    await new Promise<void>((resolve) => w.once("ready", () => resolve()));
    this.opts.log(`[WATCHER] watching ${dirs.size} directories${this.polling ? " by polling" : ""}`);
  }

  private onError(e: NodeJS.ErrnoException): void {
    if ((e.code === "ENOSPC" || e.code === "EMFILE") && !this.polling) {
      const why = `out of inotify watches (${e.code}): raise the limit with 'sysctl fs.inotify.max_user_watches=524288' (and fs.inotify.max_user_instances); watching by polling meanwhile, which is slower`;
      this.opts.log(`[WATCHER] ${why}`);
      this.polling = true;
      void this.restart().then(() => this.opts.onDegraded(why));
      return;
    }
    this.opts.log(`[WATCHER] error: ${e.message}`);
  }

  async restart(): Promise<void> {
    await this.watcher?.close();
    await this.start();
  }

  /** Makes sure every change made before this call has been seen: writes a cookie file in
   * a watched directory and waits for its event (watchman's technique). False on timeout. */
  sync(timeoutMs = 3000): Promise<boolean> {
    const file = path.join(this.opts.cookieDir, `cookie-${process.pid}-${++cookieSeq}`);
    return new Promise((resolve) => {
      const done = (ok: boolean) => {
        clearTimeout(timer);
        this.cookieWaiters.delete(file);
        fs.rmSync(file, { force: true });
        resolve(ok);
      };
      const timer = setTimeout(() => done(false), timeoutMs);
      this.cookieWaiters.set(file, () => done(true));
      fs.writeFileSync(file, "");
    });
  }

  async close(): Promise<void> {
    await this.watcher?.close();
  }
}
