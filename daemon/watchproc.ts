// The watcher's own process: chokidar runs here, at the lowest CPU priority, and sends the
// daemon one message per file that matters. Why a process: chokidar re-reads a whole watched
// directory (an lstat of every entry) on any event in it, and an in-tree build writes each
// output beside its source, so during a build it would burn CPU the BE compiles need
// (measured: about 0.5 s per edit on the thin fixture, each compile 45 % slower in the
// daemon than one-shot). Nothing it finds is needed before the build ends.
import { FSWatcher, watch } from "chokidar";
import * as path from "node:path";
import { interestingName, WatchProcMessage, WatchProcStart } from "./watcher";

let watcher: FSWatcher | undefined;

function send(m: WatchProcMessage): void {
  if (process.connected) process.send!(m);
}

async function start(opts: WatchProcStart, polling: boolean): Promise<void> {
  const dirs = new Set([...opts.dirs, opts.cookieDir]);
  const explicit = new Set(opts.files);
  const inCookies = (p: string) => p.startsWith(opts.cookieDir + "/");
  const w = watch([...dirs], {
    ignoreInitial: true,
    depth: 0,
    atomic: true,
    usePolling: polling,
    interval: 500,
    binaryInterval: 500,
    ignored: (p: string) => !dirs.has(p) && !inCookies(p) && !interestingName(path.basename(p), explicit, p),
  });
  watcher = w;
  const seen = (kind: "add" | "change" | "unlink") => (p: string) => send(inCookies(p) ? { kind: "cookie", file: p } : { kind: "change", file: p, change: kind });
  w.on("add", seen("add"));
  w.on("change", seen("change"));
  w.on("unlink", seen("unlink"));
  w.on("error", (err: unknown) => {
    const e = err as NodeJS.ErrnoException;
    if ((e.code === "ENOSPC" || e.code === "EMFILE") && !polling) {
      const why = `out of inotify watches (${e.code}): raise the limit with 'sysctl fs.inotify.max_user_watches=524288' (and fs.inotify.max_user_instances); watching by polling meanwhile, which is slower`;
      void w.close().then(() => start(opts, true)).then(() => send({ kind: "degraded", why }));
      return;
    }
    send({ kind: "log", line: `[WATCHER] error: ${e.message}` });
  });
  await new Promise<void>((resolve) => w.once("ready", () => resolve()));
  send({ kind: "ready", dirs: dirs.size, polling });
}

process.on("message", (m: WatchProcStart) => {
  start(m, m.polling).catch((e: unknown) => {
    send({ kind: "log", line: `[WATCHER] could not start: ${(e as Error).message}` });
    process.exit(1);
  });
});
// The daemon went away (or closed this watcher): nothing is left to tell.
process.on("disconnect", () => {
  void (watcher?.close() ?? Promise.resolve()).finally(() => process.exit(0));
});
