// The watcher's own process: chokidar runs here, at the lowest CPU priority, and sends the
// daemon one message per file that matters: its work (stats, events of the build's own
// outputs, its garbage) stays off the daemon's thread and out of the way of the BE
// compiles; nothing it finds is needed before the build ends.
import { FSWatcher, watch } from "chokidar";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { interestingName, WatchProcMessage, WatchProcStart } from "./watcher";

let watcher: FSWatcher | undefined;
let sentinels: fs.FSWatcher[] = [];
let rechecks: Recheck | undefined;

function send(m: WatchProcMessage): void {
  if (process.connected) process.send!(m);
}

const OUT_OF_WATCHES = new Set(["ENOSPC", "EMFILE"]);

/** Longer than chokidar's window for a file's changes (50 ms), with room for a late timer. */
const RECHECK_MS = 75;

/** A file's bytes as a digest (null: it is gone). A file too large to read each save (an
 * .incbin payload) is judged by its stat. */
function digestOf(file: string): string | null {
  try {
    const st = fs.statSync(file, { bigint: true });
    if (st.size > 16n << 20n) return `stat ${st.size} ${st.mtimeNs} ${st.ctimeNs} ${st.ino}`;
    return createHash("sha256").update(fs.readFileSync(file)).digest("hex");
  } catch {
    return null;
  }
}

/** chokidar drops a file's change that comes within 50 ms of the last one it told (the
 * throttle in its `_emit`), and a raw event within 5 ms of another: of two saves close
 * together (a burst of saves, a formatter writing after the editor) the last went unseen,
 * and the daemon kept the object of the one before. So each change sent is checked again
 * once that window has passed: bytes other than those it was sent with are sent again. A
 * cookie runs every check first, so that a sync covers the saves made before it. */
class Recheck {
  private readonly due = new Map<string, { digest: string | null; timer: NodeJS.Timeout }>();

  constructor(private readonly sendChange: (file: string) => void, private readonly ms = RECHECK_MS) {}

  /** A change (or add) of `file` is about to be sent: its bytes are read first, so that a
   * save after they were read, even one the daemon never reads, differs at the check. */
  telling(file: string, digest = digestOf(file)): void {
    const d = this.due.get(file);
    if (d) clearTimeout(d.timer);
    this.due.set(file, { digest, timer: setTimeout(() => this.check(file, true), this.ms) });
  }

  /** Every check due, now; each stays armed for changes chokidar may still drop. */
  flush(): void {
    for (const file of [...this.due.keys()]) this.check(file, false);
  }

  clear(): void {
    for (const d of this.due.values()) clearTimeout(d.timer);
    this.due.clear();
  }

  private check(file: string, last: boolean): void {
    const d = this.due.get(file);
    if (!d) return;
    const now = digestOf(file);
    // Gone: chokidar's unlink says so (it does not throttle those).
    if (now === null) {
      clearTimeout(d.timer);
      this.due.delete(file);
      return;
    }
    if (now !== d.digest) {
      this.telling(file, now);
      this.sendChange(file);
      return;
    }
    if (last) this.due.delete(file);
  }
}

async function start(opts: WatchProcStart, polling: boolean): Promise<void> {
  const explicit = new Set(opts.files);
  const dirs = new Set(opts.dirs);
  const inCookies = (p: string) => p.startsWith(opts.cookieDir + "/");
  let fellBack = false;
  const fallBack = (e: NodeJS.ErrnoException) => {
    // Every watch that failed says so: one fallback.
    if (fellBack) return;
    fellBack = true;
    const why = `out of inotify watches (${e.code}): raise the limit with 'sysctl fs.inotify.max_user_watches=524288' (and fs.inotify.max_user_instances); watching by polling meanwhile, which is slower`;
    void close().then(() => start(opts, true)).then(() => send({ kind: "degraded", why }));
  };
  // chokidar re-reads a whole directory it watches (an lstat of each entry) on any event in
  // it, and an in-tree build writes every output beside its source: watched so, the tree
  // cost about 0.6 s of CPU per edit on the thin fixture, and the BE compiles beside it took
  // a third longer. So chokidar watches the input files themselves, and a bare inotify watch
  // per directory (a name per event, nothing read) sees a file that matters appear: a new
  // one, or one deleted and made again (a git checkout). Polling has no such events: there
  // chokidar polls the directories, as before.
  // A file missing now is left to its directory's watch (chokidar would watch the
  // directory for it, re-reads and all).
  const known = new Set(polling ? [] : opts.watchFiles.filter((f) => fs.existsSync(f)));
  const roots = polling ? [...opts.dirs, opts.cookieDir] : [...known, opts.cookieDir];
  const w = watch(roots, {
    ignoreInitial: true,
    depth: 0,
    atomic: true,
    usePolling: polling,
    interval: 500,
    binaryInterval: 500,
    ignored: polling ? (p: string) => !dirs.has(p) && p !== opts.cookieDir && !inCookies(p) && !interestingName(path.basename(p), explicit, p) : undefined,
  });
  watcher = w;
  const recheck = new Recheck((p) => {
    send({ kind: "log", line: `[WATCHER] ${p}: saved again within chokidar's 50 ms window, seen by the recheck` });
    send({ kind: "change", file: p, change: "change" });
  });
  rechecks = recheck;
  const seen = (kind: "add" | "change" | "unlink") => (p: string) => {
    if (inCookies(p)) {
      recheck.flush();
      return send({ kind: "cookie", file: p });
    }
    if (kind === "unlink" && !polling) {
      // Deleted and made again before chokidar said so: the directory's watch ignored the
      // new one as known, so it is watched again here.
      if (fs.existsSync(p)) {
        w.add(p);
        recheck.telling(p);
        return send({ kind: "change", file: p, change: "change" });
      }
      // Gone: if it comes back, the directory's watch sees it and chokidar watches it again.
      known.delete(p);
    }
    if (kind !== "unlink") recheck.telling(p);
    send({ kind: "change", file: p, change: kind });
  };
  w.on("add", seen("add"));
  w.on("change", seen("change"));
  w.on("unlink", seen("unlink"));
  w.on("error", (err: unknown) => {
    const e = err as NodeJS.ErrnoException;
    if (OUT_OF_WATCHES.has(e.code ?? "") && !polling) return fallBack(e);
    send({ kind: "log", line: `[WATCHER] error: ${e.message}` });
  });
  await new Promise<void>((resolve) => w.once("ready", () => resolve()));
  if (!polling) {
    for (const dir of opts.dirs) {
      let s: fs.FSWatcher;
      try {
        s = fs.watch(dir, { persistent: true }, (event, name) => {
          if (!name || event !== "rename") return;
          const full = path.join(dir, name.toString());
          if (!interestingName(path.basename(full), explicit, full) || !fs.existsSync(full)) return;
          if (known.has(full)) {
            // A name that matters made anew (renamed over, or deleted and created again).
            // chokidar's watch of the file is on the old inode; it re-watches only when the
            // inode number differs, and a quick delete and create often reuses the number.
            w.unwatch(full);
            w.add(full);
            recheck.telling(full);
            return send({ kind: "change", file: full, change: "change" });
          }
          known.add(full);
          w.add(full);
          recheck.telling(full);
          send({ kind: "change", file: full, change: "add" });
        });
      } catch (err) {
        const e = err as NodeJS.ErrnoException;
        if (OUT_OF_WATCHES.has(e.code ?? "")) return fallBack(e);
        // A directory gone since the graph was read: nothing in it to watch.
        continue;
      }
      s.on("error", (err: Error) => {
        const e = err as NodeJS.ErrnoException;
        if (OUT_OF_WATCHES.has(e.code ?? "")) return fallBack(e);
        send({ kind: "log", line: `[WATCHER] error on ${dir}: ${e.message}` });
      });
      sentinels.push(s);
    }
  }
  send({ kind: "ready", dirs: opts.dirs.length, files: known.size, polling });
}

async function close(): Promise<void> {
  for (const s of sentinels) s.close();
  sentinels = [];
  rechecks?.clear();
  await watcher?.close();
}

process.on("message", (m: WatchProcStart) => {
  start(m, m.polling).catch((e: unknown) => {
    send({ kind: "log", line: `[WATCHER] could not start: ${(e as Error).message}` });
    process.exit(1);
  });
});
// The daemon went away (or closed this watcher): nothing is left to tell.
process.on("disconnect", () => {
  void close().finally(() => process.exit(0));
});
