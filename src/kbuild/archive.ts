// Reading kbuild's thin archives (`vmlinux.a`, `built-in.a`, `lib.a`): only the member
// list matters, in order. Thin archives store no member data, just paths relative to
// the archive's directory.
import * as fs from "node:fs";
import * as path from "node:path";
import { KtldError } from "../errors";

const THIN_MAGIC = "!<thin>\n";
const REGULAR_MAGIC = "!<arch>\n";
const HEADER = 60;

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
      let member: string;
      if (name.startsWith("/")) {
        const at = Number.parseInt(name.slice(1), 10);
        const end = names.indexOf("\n", at);
        member = names.slice(at, end < 0 ? undefined : end).replace(/\/$/, "");
      } else {
        member = name.replace(/\/$/, "");
      }
      const rel = path.isAbsolute(member) ? member : path.join(path.dirname(archive), member);
      members.push(path.normalize(rel));
    }
    // Thin archives carry data only for the symbol and name tables.
    off = dataStart + (special ? size + (size % 2) : 0);
  }
  return members;
}
