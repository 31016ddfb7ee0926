// Reading parts of an ELF64 little-endian file (one section, the symbol table) without
// reading the rest of it.
import * as fs from "node:fs";

function readAt(fd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  const got = fs.readSync(fd, buf, 0, length, offset);
  if (got !== length) throw new Error(`short read: ${got} of ${length} bytes at ${offset}`);
  return buf;
}

interface SectionHeader {
  readonly name: string;
  readonly type: number;
  readonly addr: bigint;
  readonly offset: number;
  readonly size: number;
  readonly link: number;
  readonly entsize: number;
  readonly flags: bigint;
  readonly addralign: bigint;
}

const SHT_NOBITS = 8;
const SHT_SYMTAB = 2;

/** Runs `fn` over the file's section headers (with their names) and a reader of its bytes.
 * Throws on a file that is not a whole ELF64 little-endian object. */
function withSections<T>(file: string, fn: (sections: SectionHeader[], read: (offset: number, length: number) => Buffer) => T): T {
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
    const raw = (i: number) => ({
      name: table.readUInt32LE(i * shentsize),
      type: table.readUInt32LE(i * shentsize + 4),
      addr: table.readBigUInt64LE(i * shentsize + 0x10),
      offset: Number(table.readBigUInt64LE(i * shentsize + 0x18)),
      size: Number(table.readBigUInt64LE(i * shentsize + 0x20)),
      link: table.readUInt32LE(i * shentsize + 0x28),
      entsize: Number(table.readBigUInt64LE(i * shentsize + 0x38)),
      flags: table.readBigUInt64LE(i * shentsize + 8),
      addralign: table.readBigUInt64LE(i * shentsize + 0x30),
    });
    const strtab = raw(shstrndx);
    const names = readAt(fd, strtab.offset, strtab.size);
    const sections: SectionHeader[] = [];
    for (let i = 0; i < shnum; i++) {
      const h = raw(i);
      const end = names.indexOf(0, h.name);
      sections.push({ ...h, name: names.toString("latin1", h.name, end < 0 ? names.length : end) });
    }
    return fn(sections, (offset, length) => readAt(fd, offset, length));
  } finally {
    fs.closeSync(fd);
  }
}

/** The bytes of section `name` (e.g. `.BTF`) of an ELF64 little-endian file; undefined if
 * the file has no such section. Throws on a file that is not a whole ELF64 object. */
export function elfSection(file: string, name: string): Buffer | undefined {
  return withSections(file, (sections, read) => {
    const h = sections.find((s, i) => i > 0 && s.name === name);
    if (!h) return undefined;
    // SHT_NOBITS: the section takes no bytes in the file.
    return h.type === SHT_NOBITS ? Buffer.alloc(0) : read(h.offset, h.size);
  });
}

const SHF_COMPRESSED = 0x800n;

/** Whether the bytes of any section whose name begins with `prefix` (`.debug_`) contain
 * `needle`, read a piece at a time. Throws on a compressed one (its bytes say nothing). */
export function elfSectionsContain(file: string, prefix: string, needle: string): boolean {
  const want = Buffer.from(needle, "latin1");
  const PIECE = 16 << 20;
  return withSections(file, (sections, read) => {
    for (const [i, h] of sections.entries()) {
      if (i === 0 || !h.name.startsWith(prefix) || h.type === SHT_NOBITS) continue;
      if (h.flags & SHF_COMPRESSED) throw new Error(`${file}: ${h.name} is compressed`);
      // Pieces overlap by the needle's length less one, so that none is cut in two.
      for (let at = 0; at < h.size; at += PIECE) {
        const len = Math.min(PIECE + want.length - 1, h.size - at);
        if (read(h.offset + at, len).includes(want)) return true;
      }
    }
    return false;
  });
}

/** Whether the file has a section called `name` (its headers read, not its bytes). */
export function elfHasSection(file: string, name: string): boolean {
  return withSections(file, (sections) => sections.some((s, i) => i > 0 && s.name === name));
}

/** One symbol of `.symtab`: its name, type (STT_*), section index and value. */
export interface ElfSymbol {
  readonly name: string;
  readonly type: number;
  /** STB_* */
  readonly bind: number;
  readonly shndx: number;
  readonly value: bigint;
  readonly size: bigint;
}

export const STT_OBJECT = 1;
export const STT_FUNC = 2;

/** The `.symtab` of a file (empty if it has none), and its sections by name and index. */
export function elfSymbols(file: string): { symbols: ElfSymbol[]; sections: readonly { name: string; addr: bigint; size: number }[] } {
  return withSections(file, (sections, read) => {
    const symtab = sections.find((s) => s.type === SHT_SYMTAB);
    const out: ElfSymbol[] = [];
    if (symtab && symtab.entsize >= 24) {
      const strs = sections[symtab.link];
      const names = read(strs.offset, strs.size);
      const bytes = read(symtab.offset, symtab.size);
      for (let at = 0; at + 24 <= bytes.length; at += symtab.entsize) {
        const nameOff = bytes.readUInt32LE(at);
        const end = names.indexOf(0, nameOff);
        out.push({
          name: names.toString("latin1", nameOff, end < 0 ? names.length : end),
          type: bytes[at + 4] & 0xf,
          bind: bytes[at + 4] >> 4,
          shndx: bytes.readUInt16LE(at + 6),
          value: bytes.readBigUInt64LE(at + 8),
          size: bytes.readBigUInt64LE(at + 16),
        });
      }
    }
    return { symbols: out, sections: sections.map((s) => ({ name: s.name, addr: s.addr, size: s.size })) };
  });
}

const STT_FILE = 4;

/** What a link lays out of an object: each section's name, type, flags, size and alignment,
 * and each symbol but the file names (name, type, binding, section, value, size), one line
 * each. Two objects with the same layout take the same room and define the same symbols at
 * the same places; only their bytes may differ. */
export function elfLayout(file: string): { sections: string[]; symbols: string[] } {
  const sections = withSections(file, (hs) => hs.map((h) => `${h.name} ${h.type} ${h.flags} ${h.type === SHT_SYMTAB || h.name === ".strtab" ? "-" : h.size} ${h.addralign}`));
  const symbols = elfSymbols(file).symbols.filter((s) => s.type !== STT_FILE).map((s) => `${s.name} ${s.type} ${s.bind} ${s.shndx} ${s.value} ${s.size}`);
  return { sections, symbols };
}
