// Content hashes: decisions are made on bytes, never on mtimes (lld rewrites every
// index file on every thin-link with the same bytes and a new mtime).
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";

export type Hash = string;

export function hashBytes(buf: Uint8Array): Hash {
  return createHash("sha256").update(buf).digest("hex");
}

/** sha256 of a file, or null if it does not exist. */
export function hashFile(file: string): Hash | null {
  try {
    return hashBytes(fs.readFileSync(file));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return null;
    throw e;
  }
}

/** One hash over a list of fields, unambiguous (each field is length-prefixed). */
export function hashFields(fields: readonly string[]): Hash {
  const h = createHash("sha256");
  for (const f of fields) h.update(`${Buffer.byteLength(f)}:`).update(f);
  return h.digest("hex");
}

const BITCODE_MAGIC = Buffer.from([0x42, 0x43, 0xc0, 0xde]);
const BITCODE_WRAPPER = Buffer.from([0xde, 0xc0, 0x17, 0x0b]);

/** LLVM bitcode (raw or wrapped), as clang -flto writes it. */
export function isBitcode(head: Uint8Array): boolean {
  const b = Buffer.from(head.subarray(0, 4));
  return b.equals(BITCODE_MAGIC) || b.equals(BITCODE_WRAPPER);
}

export function isElf(head: Uint8Array): boolean {
  return head.length >= 4 && head[0] === 0x7f && head[1] === 0x45 && head[2] === 0x4c && head[3] === 0x46;
}

export function readHead(file: string, n = 4): Buffer {
  const fd = fs.openSync(file, "r");
  try {
    const buf = Buffer.alloc(n);
    const got = fs.readSync(fd, buf, 0, n, 0);
    return buf.subarray(0, got);
  } finally {
    fs.closeSync(fd);
  }
}

/** Whether a buffer is a whole ELF64 little-endian object: its section header table
 * (which the linker reads last) lies within the file. A compiler killed or faulty
 * mid-write leaves something shorter. */
export function isWholeElf64(buf: Uint8Array): boolean {
  if (buf.length < 64 || !isElf(buf) || buf[4] !== 2 || buf[5] !== 1) return false;
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const shoff = Number(b.readBigUInt64LE(0x28));
  const shentsize = b.readUInt16LE(0x3a);
  const shnum = b.readUInt16LE(0x3c);
  return shoff > 0 && shentsize >= 64 && shoff + shentsize * shnum <= b.length;
}

/** Content hashes of the files under `dir`, rehashed only when a file's stat (size,
 * mtime, ctime, inode) changed; each file is stat'ed at most once per epoch (one build). */
export class HashCache {
  private readonly entries = new Map<string, { size: number; mtimeMs: number; ctimeMs: number; ino: number; hash: Hash }>();
  private checked = new Set<string>();

  constructor(readonly dir: string) {}

  newEpoch(): void {
    this.checked = new Set();
  }

  /** `rel` was just written with bytes of hash `hash` (by us, from bytes we hashed):
   * remembered with its new stat, so it is not read again. */
  remember(rel: string, hash: Hash): void {
    const abs = path.resolve(this.dir, rel);
    const st = fs.statSync(abs);
    this.entries.set(abs, { size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino, hash });
    this.checked.add(abs);
  }

  get(rel: string): Hash | null {
    const abs = path.resolve(this.dir, rel);
    const e = this.entries.get(abs);
    if (e && this.checked.has(abs)) return e.hash;
    this.checked.add(abs);
    const st = fs.statSync(abs, { throwIfNoEntry: false });
    if (!st) {
      this.entries.delete(abs);
      return null;
    }
    if (e && e.size === st.size && e.mtimeMs === st.mtimeMs && e.ctimeMs === st.ctimeMs && e.ino === st.ino) return e.hash;
    const hash = hashFile(abs);
    if (hash === null) return null;
    this.entries.set(abs, { size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs, ino: st.ino, hash });
    return hash;
  }
}
