// Reading kbuild's thin archives (`vmlinux.a`, `built-in.a`, `lib.a`): only the member
// list matters, in order. Thin archives store no member data, just paths relative to
// the archive's directory.
import * as fs from "node:fs";
import * as path from "node:path";
import { KtldError } from "../base/errors";
import { killPoint } from "../base/killpoint";
import { TEMP_SUFFIX } from "./names";

const THIN_MAGIC = "!<thin>\n";
const REGULAR_MAGIC = "!<arch>\n";
const HEADER = 60;

/** A member's path from its header name: `/<offset>` into the long-name table, or the name. */
function memberName(name: string, names: string): string {
  if (!name.startsWith("/")) return name.replace(/\/$/, "");
  const at = Number.parseInt(name.slice(1), 10);
  const end = names.indexOf("\n", at);
  return names.slice(at, end < 0 ? undefined : end).replace(/\/$/, "");
}

/** Member paths of a thin archive, relative to `baseDir` (the build dir), in archive order. */
export function thinArchiveMembers(baseDir: string, archive: string): string[] {
  const file = path.join(baseDir, archive);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    throw new KtldError(`${archive}: missing; run make vmlinux first`);
  }
  const magic = buf.subarray(0, 8).toString("latin1");
  if (magic === REGULAR_MAGIC) {
    throw new KtldError(`${archive}: a regular archive, not a thin one; ktld needs kbuild's thin archives (Linux >= 5.x)`);
  }
  if (magic !== THIN_MAGIC) throw new KtldError(`${archive}: not an archive`);
  let names = "";
  const members: string[] = [];
  let off = 8;
  while (off + HEADER <= buf.length) {
    const name = buf.subarray(off, off + 16).toString("latin1").trimEnd();
    const size = Number.parseInt(buf.subarray(off + 48, off + 58).toString("latin1").trim(), 10);
    if (!Number.isFinite(size) || buf.subarray(off + 58, off + 60).toString("latin1") !== "`\n") {
      throw new KtldError(`${archive}: corrupt archive header at byte ${off}; rebuild it with make`);
    }
    const dataStart = off + HEADER;
    const special = name === "/" || name === "/SYM64/" || name === "//" || name === "__.SYMDEF";
    if (name === "//") names = buf.subarray(dataStart, dataStart + size).toString("latin1");
    if (!special) {
      const member = memberName(name, names);
      const rel = path.isAbsolute(member) ? member : path.join(path.dirname(archive), member);
      members.push(path.normalize(rel));
    }
    // Thin archives carry data only for the symbol and name tables.
    off = dataStart + (special ? size + (size % 2) : 0);
  }
  return members;
}

/** A thin archive without a symbol table (kbuild's `built-in.a` and `vmlinux.a`, made by
 * `llvm-ar cDPrST`) brought up to date in place of kbuild's `ar` command, when the members
 * are the same files and only their sizes moved (an FE replay): such an archive holds, per
 * member, a header whose size field is the member file's size (`D`: no times, ids or
 * modes), so llvm-ar would write these bytes. Written into a temp file and renamed over the
 * archive. Returns false, having written nothing, where that does not hold: another kind of
 * archive, a symbol table, a member missing, a header it cannot read. */
export function refreshThinArchive(baseDir: string, archive: string): boolean {
  const file = path.join(baseDir, archive);
  let buf: Buffer;
  try {
    buf = fs.readFileSync(file);
  } catch {
    return false;
  }
  if (buf.subarray(0, 8).toString("latin1") !== THIN_MAGIC) return false;
  const out = Buffer.from(buf);
  let names = "";
  let off = 8;
  while (off + HEADER <= buf.length) {
    const name = buf.subarray(off, off + 16).toString("latin1").trimEnd();
    const size = Number.parseInt(buf.subarray(off + 48, off + 58).toString("latin1").trim(), 10);
    if (!Number.isFinite(size) || buf.subarray(off + 58, off + 60).toString("latin1") !== "`\n") return false;
    const dataStart = off + HEADER;
    if (name === "/" || name === "/SYM64/" || name === "__.SYMDEF") return false; // a symbol table: ar must
    if (name === "//") {
      names = buf.subarray(dataStart, dataStart + size).toString("latin1");
      off = dataStart + size + (size % 2);
      continue;
    }
    const member = memberName(name, names);
    const st = fs.statSync(path.isAbsolute(member) ? member : path.join(path.dirname(file), member), { throwIfNoEntry: false });
    if (!st?.isFile()) return false;
    const field = String(st.size).padEnd(10);
    if (field.length > 10) return false;
    out.write(field, off + 48, 10, "latin1");
    off = dataStart;
  }
  if (off !== buf.length) return false;
  const tmp = `${file}${TEMP_SUFFIX}`;
  fs.writeFileSync(tmp, out);
  killPoint("archive:before-rename");
  fs.renameSync(tmp, file);
  return true;
}
