// Reading one section of an ELF64 little-endian file without reading the rest of it.
import * as fs from "node:fs";

function readAt(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const got = fs.readSync(fd, buf, 0, length, offset);
  if (got !== length) throw new Error(`short read: ${got} of ${length} bytes at ${offset}`);
  return buf;
}

/** The bytes of section `name` (e.g. `.BTF`) of an ELF64 little-endian file; undefined if
 * the file has no such section. Throws on a file that is not a whole ELF64 object. */
export function elfSection(file: string, name: string): Buffer | undefined {
  const fd = fs.openSync(file, "r");
  try {
    const eh = readAt(fd, 0, 64);
    if (eh.readUInt32BE(0) !== 0x7f454c46 || eh[4] !== 2 || eh[5] !== 1) throw new Error(`${file}: not an ELF64 little-endian file`);
    const shoff = Number(eh.readBigUInt64LE(0x28));
    const shentsize = eh.readUInt16LE(0x3a);
    const shnum = eh.readUInt16LE(0x3c);
    const shstrndx = eh.readUInt16LE(0x3e);
    if (!shoff || shentsize < 64 || shstrndx >= shnum) throw new Error(`${file}: no section header table`);
    const table = readAt(fd, shoff, shentsize * shnum);
    const header = (i: number) => ({
      name: table.readUInt32LE(i * shentsize),
      type: table.readUInt32LE(i * shentsize + 4),
      offset: Number(table.readBigUInt64LE(i * shentsize + 0x18)),
      size: Number(table.readBigUInt64LE(i * shentsize + 0x20)),
    });
    const strtab = header(shstrndx);
    const names = readAt(fd, strtab.offset, strtab.size);
    const want = Buffer.from(`${name}\0`);
    for (let i = 1; i < shnum; i++) {
      const h = header(i);
      if (names.subarray(h.name, h.name + want.length).equals(want)) {
        // SHT_NOBITS: the section takes no bytes in the file.
        return h.type === 8 ? Buffer.alloc(0) : readAt(fd, h.offset, h.size);
      }
    }
    return undefined;
  } finally {
    fs.closeSync(fd);
  }
}
