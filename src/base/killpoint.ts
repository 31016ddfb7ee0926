// Named crash points, for tests that must kill ktld at a chosen moment rather than at
// whatever moment a status poll happens to see.
//
// KTLD_KILL_AT=<point> (or <point>@<n>: its n-th passage) makes the process kill itself
// with SIGKILL when it reaches that point, after appending `<point> <pid>` to the file
// KTLD_KILL_LOG: a test then knows the blow landed where it says. Unset (always, outside
// tests), a point costs one comparison. Worker threads see the same environment, and a
// SIGKILL from one of them ends the whole process.
import * as fs from "node:fs";

/** The fixed points, in the order a build reaches them. Each step of a link is a point too,
 * `link:<step>` as `ktld why` names it (`link:LD vmlinux.o`, `link:LD .tmp_vmlinux1`): the
 * step has started (its process runs) when the point is reached. */
export const KILL_POINTS = [
  /** An FE replay handed to the pool (its compiler starting or running). */
  "frontend:compile",
  /** An FE replay's object written, its `.cmd` file not yet. */
  "frontend:before-cmd",
  /** The thin-link's process ended, its outputs still staged. */
  "thin-link:before-publish",
  /** One index file moved into the build dir, the others not yet. */
  "thin-link:publish",
  /** Published, the thin-link's record not yet written. */
  "thin-link:before-record",
  /** A native half copied into the cache (its temp file written, not renamed). */
  "native:cache-write",
  /** A native cached, its temp file in the build dir not yet renamed into place. */
  "native:tree-write",
  /** A native in place, its unit's record not yet written. */
  "native:before-record",
  /** An archive rewritten into its temp file, not yet renamed over the old one. */
  "archive:before-rename",
  /** A successful build's file hashes about to be committed, and just committed. */
  "baseline:before-commit",
  "baseline:after-commit",
  /** A booted kernel's qemu running. */
  "boot:running",
] as const;
export type KillPoint = (typeof KILL_POINTS)[number] | `link:${string}`;

const wanted = /^(.+?)(?:@(\d+))?$/.exec(process.env.KTLD_KILL_AT ?? "");
let passages = 0;
let fired = false;

/** Dies here if KTLD_KILL_AT names this point (and this is its n-th passage). */
export function killPoint(point: KillPoint): void {
  if (!wanted || wanted[1] !== point) return;
  // KTLD_KILL_ARM=<file>: passages count only while that file exists (a test arms the
  // point once the daemon's startup is over, so that its own edit's build is the one hit).
  const arm = process.env.KTLD_KILL_ARM;
  if (arm && !fs.existsSync(arm)) return;
  if (fired || ++passages < Number(wanted[2] ?? 1)) return;
  fired = true;
  const log = process.env.KTLD_KILL_LOG;
  if (log) fs.appendFileSync(log, `${point} ${process.pid}\n`);
  // KTLD_KILL_WITH=SIGTERM (SIGINT, SIGHUP): that signal instead, once, and the process goes
  // on to meet it as it would one sent from outside at this moment.
  const sig = process.env.KTLD_KILL_WITH ?? "SIGKILL";
  process.kill(process.pid, sig);
}
