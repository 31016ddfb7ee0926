// Watching the tree: the directories the objects' sources and headers live in (depth 0
// each, never the whole tree), filtered to the files that can matter. chokidar runs in a
// process of its own at the lowest priority (watchproc.ts says why); this side keeps the
// daemon's view of it: its events, the cookies, its fallback to polling.
import { ChildProcess, fork } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { KBUILD_FILE } from "../src/graph";
import type { WatchKind } from "../src/session";
import { markedEnv } from "../src/base/process";

const INTERESTING = /\.(c|h|S|tbl)$/;

/** Whether a file name can matter to the build (editor swap/backup files cannot). */
export function interestingName(name: string, explicit: ReadonlySet<string>, full: string): boolean {
  if (explicit.has(full)) return true;
  if (name.startsWith(".#") || name.endsWith("~") || name.endsWith(".swp") || name.endsWith(".swx")) return false;
  if (KBUILD_FILE.test(name)) return true;
  if (name.startsWith(".")) return false;
  return INTERESTING.test(name) && !name.endsWith(".thinlto.bc");
}

/** What the daemon asks of the watcher process (its one message). */
export interface WatchProcStart {
  readonly dirs: readonly string[];
  /** The input files themselves (chokidar watches these, not their directories). */
  readonly watchFiles: readonly string[];
  readonly files: readonly string[];
  readonly cookieDir: string;
  readonly polling: boolean;
}

/** What the watcher process tells the daemon. */
export type WatchProcMessage =
  | { kind: "ready"; dirs: number; files: number; polling: boolean }
  | { kind: "change"; file: string; change: WatchKind }
  | { kind: "cookie"; file: string }
  | { kind: "degraded"; why: string }
  | { kind: "log"; line: string };

export interface WatcherOptions {
  readonly dirs: readonly string[];
  /** Every input file: watched one by one (new ones are seen through their directory). */
  readonly watchFiles: readonly string[];
  /** Files watched whatever their name (.incbin payloads). */
  readonly files: ReadonlySet<string>;
  readonly cookieDir: string;
  readonly onChange: (file: string, kind: WatchKind) => void;
  readonly log: (msg: string) => void;
  /** Called when watching fell back to polling (inotify exhausted). */
  readonly onDegraded: (why: string) => void;
  /** The watcher process ended on its own: its events are lost from then on. */
  readonly onLost: (why: string) => void;
  readonly polling?: boolean;
}

/** Cookie names are unique in the process: two watchers overlap while one replaces the other. */
let cookieSeq = 0;

export class TreeWatcher {
  private child?: ChildProcess;
  private closing = false;
  private readonly cookieWaiters = new Map<string, () => void>();
  polling: boolean;

  /** The watcher process's pid (its memory is reported beside the daemon's). */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  constructor(private readonly opts: WatcherOptions) {
    this.polling = opts.polling ?? false;
    fs.mkdirSync(opts.cookieDir, { recursive: true });
  }

  start(): Promise<void> {
    // No inherited flags (--expose-gc, --cpu-prof): the watcher is a plain process.
    // In the daemon's process group (its own session would put it in a scheduler autogroup of
    // its own, where nice 19 no longer yields to the compiles). It ends when the daemon's
    // channel goes; one stopped or stuck when the daemon was killed carries the ledger's mark
    // (markedEnv), by which the next daemon reaps it.
    const child = fork(path.join(__dirname, "watchproc.js"), [], { execArgv: [], stdio: ["ignore", "ignore", "inherit", "ipc"], env: markedEnv() });
    this.child = child;
    try {
      os.setPriority(child.pid!, 19);
    } catch {
      // Not allowed to lower it here: it runs at the daemon's priority, which only costs speed.
    }
    let ready = false;
    return new Promise<void>((resolve, reject) => {
      child.on("message", (m: WatchProcMessage) => {
        switch (m.kind) {
          case "ready":
            ready = true;
            this.opts.log(`[WATCHER] watching ${m.polling ? `${m.dirs} directories by polling` : `${m.files} files, new ones in ${m.dirs} directories`} (process ${child.pid})`);
            resolve();
            break;
          case "change":
            this.opts.onChange(m.file, m.change);
            break;
          case "cookie":
            this.cookieWaiters.get(m.file)?.();
            break;
          case "degraded":
            this.polling = true;
            this.opts.log(`[WATCHER] ${m.why}`);
            this.opts.onDegraded(m.why);
            break;
          case "log":
            this.opts.log(m.line);
            break;
        }
      });
      child.on("error", (e) => reject(e));
      child.on("exit", (code, signal) => {
        const why = `the watcher process ended (${signal ?? `exit ${code}`})`;
        reject(new Error(why));
        // Lost after it was up: the daemon starts another. Before: start() fails, no loop.
        if (ready && !this.closing) this.opts.onLost(why);
      });
      const start: WatchProcStart = { dirs: this.opts.dirs, watchFiles: this.opts.watchFiles, files: [...this.opts.files], cookieDir: this.opts.cookieDir, polling: this.polling };
      child.send(start);
    });
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
    this.closing = true;
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
    // It closes chokidar and exits when the channel goes; a watcher stuck past that is killed.
    child.disconnect();
    const timer = setTimeout(() => child.kill("SIGKILL"), 3000);
    await exited;
    clearTimeout(timer);
  }
}
