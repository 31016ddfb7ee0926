// The types of a BTF encoding, read as libbpf's dedup sees them, for one question: does a
// changed object's encoding differ from its last one only in types that vmlinux's BTF takes
// from an earlier object?
//
// vmlinux's .BTF is pahole's encoding of every unit's DWARF (one merged compile unit: the
// types of each object in link order, then the functions), deduplicated by libbpf and
// compacted: each class of equal types keeps the member that dedup met first, and the kept
// types keep their order. For "simple" types (INT and FLOAT, which dedup compares field by
// field; PTR, CONST, VOLATILE, RESTRICT and TYPEDEF over simple types or void, and ARRAY of
// simple types, which it compares by their targets' classes) the member met first is the one
// with the lowest id, unless a type of lower id refers to a later one; no object's DWARF
// refers into another object's. So a simple type of an object whose class an earlier object
// has is never the kept member: where it sits in its object, and whether the object has it at
// all, does not change the .BTF (its name, if any, is already in the string section from the
// earlier one). A new `pr_info` adds a string literal, whose DWARF (clang 19) is an anonymous
// variable of type `char[N]`: a new simple type, and `char` and friends move up before it.
import { Hash, hashFields } from "./base/hash";

export const BTF_MAGIC = 0xeb9f;

/** One BTF type: its kind and what identifies it, with the ids it refers to apart. */
export interface BtfType {
  readonly kind: number;
  readonly name: string;
  readonly info: number;
  /** The size field, for the kinds where it is a size (else the referred id is in `refs`). */
  readonly size: number | undefined;
  /** Type ids this type refers to (0: void). */
  readonly refs: readonly number[];
  /** Everything else, names of members read from the string section. */
  readonly data: readonly (string | number)[];
}

const KIND = { INT: 1, PTR: 2, ARRAY: 3, STRUCT: 4, UNION: 5, ENUM: 6, FWD: 7, TYPEDEF: 8, VOLATILE: 9, CONST: 10, RESTRICT: 11, FUNC: 12, FUNC_PROTO: 13, VAR: 14, DATASEC: 15, FLOAT: 16, DECL_TAG: 17, TYPE_TAG: 18, ENUM64: 19 } as const;
/** Kinds whose third word is a type id, not a size. */
const REF_KINDS = new Set<number>([KIND.PTR, KIND.TYPEDEF, KIND.VOLATILE, KIND.CONST, KIND.RESTRICT, KIND.FUNC, KIND.FUNC_PROTO, KIND.VAR, KIND.DECL_TAG, KIND.TYPE_TAG]);
/** Kinds that are simple over simple targets (see the top). */
const SIMPLE_OVER = new Set<number>([KIND.PTR, KIND.TYPEDEF, KIND.VOLATILE, KIND.CONST, KIND.RESTRICT, KIND.ARRAY]);

/** The types of a raw BTF blob (a `.BTF` section, or pahole's `--btf_encode_detached` file);
 * index 0 is void. Throws on anything it cannot read whole. */
export function parseBtf(buf: Buffer): BtfType[] {
  if (buf.length < 24 || buf.readUInt16LE(0) !== BTF_MAGIC) throw new Error("not BTF (no 0xeb9f magic)");
  const hdrLen = buf.readUInt32LE(4);
  const typeOff = hdrLen + buf.readUInt32LE(8);
  const typeEnd = typeOff + buf.readUInt32LE(12);
  const strOff = hdrLen + buf.readUInt32LE(16);
  const strEnd = strOff + buf.readUInt32LE(20);
  if (typeEnd > buf.length || strEnd > buf.length) throw new Error("BTF sections run past the end of the blob");
  const names = new Map<number, string>();
  const str = (off: number): string => {
    let s = names.get(off);
    if (s === undefined) {
      const at = strOff + off;
      const end = buf.indexOf(0, at);
      if (at >= strEnd || end < 0 || end >= strEnd) throw new Error(`BTF string offset ${off} out of range`);
      names.set(off, (s = buf.toString("latin1", at, end)));
    }
    return s;
  };
  const types: BtfType[] = [{ kind: 0, name: "void", info: 0, size: 0, refs: [], data: [] }];
  let p = typeOff;
  const need = (n: number) => {
    if (p + n > typeEnd) throw new Error(`BTF type ${types.length} runs past the type section`);
  };
  while (p < typeEnd) {
    need(12);
    const name = str(buf.readUInt32LE(p));
    const info = buf.readUInt32LE(p + 4);
    const third = buf.readUInt32LE(p + 8);
    p += 12;
    const kind = (info >>> 24) & 0x1f;
    const vlen = info & 0xffff;
    const refs: number[] = REF_KINDS.has(kind) ? [third] : [];
    const data: (string | number)[] = [];
    const words = (n: number) => {
      need(4 * n);
      const w = Array.from({ length: n }, (_, i) => buf.readUInt32LE(p + 4 * i));
      p += 4 * n;
      return w;
    };
    switch (kind) {
      case KIND.INT: case KIND.VAR: case KIND.DECL_TAG: data.push(...words(1)); break;
      case KIND.ARRAY: { const [elem, index, n] = words(3); refs.push(elem, index); data.push(n); break; }
      case KIND.STRUCT: case KIND.UNION:
        for (let i = 0; i < vlen; i++) { const [m, t, off] = words(3); data.push(str(m), off); refs.push(t); }
        break;
      case KIND.ENUM: for (let i = 0; i < vlen; i++) { const [m, v] = words(2); data.push(str(m), v); } break;
      case KIND.ENUM64: for (let i = 0; i < vlen; i++) { const [m, lo, hi] = words(3); data.push(str(m), lo, hi); } break;
      case KIND.FUNC_PROTO: for (let i = 0; i < vlen; i++) { const [m, t] = words(2); data.push(str(m)); refs.push(t); } break;
      case KIND.DATASEC: for (let i = 0; i < vlen; i++) { const [t, off, sz] = words(3); refs.push(t); data.push(off, sz); } break;
      case KIND.PTR: case KIND.FWD: case KIND.TYPEDEF: case KIND.VOLATILE: case KIND.CONST: case KIND.RESTRICT:
      case KIND.FUNC: case KIND.FLOAT: case KIND.TYPE_TAG: break;
      default: throw new Error(`BTF kind ${kind} (type ${types.length}) is not one ktld reads`);
    }
    types.push({ kind, name, info, size: REF_KINDS.has(kind) ? undefined : third, refs, data });
  }
  for (const [id, t] of types.entries()) {
    if (t.refs.some((r) => r >= types.length)) throw new Error(`BTF type ${id} refers to a type that is not there`);
  }
  return types;
}

/** Each type's class as dedup tells simple types apart (see the top); undefined for a type
 * that is not simple. Pure. */
export function simpleSignatures(types: readonly BtfType[]): (string | undefined)[] {
  const sig: (string | undefined | null)[] = new Array(types.length).fill(null);
  sig[0] = "void";
  const of = (id: number): string | undefined => {
    const known = sig[id];
    if (known !== null) return known;
    sig[id] = undefined; // a cycle (none among simple types) leaves it not simple
    const t = types[id];
    let s: string | undefined;
    if (t.kind === KIND.INT || t.kind === KIND.FLOAT) s = `${t.kind}|${t.name}|${t.info}|${t.size}|${t.data.join(",")}`;
    else if (SIMPLE_OVER.has(t.kind)) {
      const targets = t.refs.map(of);
      if (targets.every((x) => x !== undefined)) s = `${t.kind}|${t.name}|${t.info}|${t.size ?? ""}|${t.data.join(",")}|${targets.map((x) => `(${x})`).join("")}`;
    }
    sig[id] = s;
    return s;
  };
  return types.map((_, id) => of(id));
}

/** The encoding with every simple type whose class is in `left` taken out: the other types in
 * their order, a reference to a type taken out written as its class. Two encodings with the
 * same key differ only in where, and whether, they have simple types of those classes. Pure. */
export function typesLeaving(types: readonly BtfType[], left: ReadonlySet<string>, sigs = simpleSignatures(types)): Hash {
  const out = (id: number) => id > 0 && sigs[id] !== undefined && left.has(sigs[id]!);
  const renum = new Map<number, number>();
  for (let id = 1; id < types.length; id++) if (!out(id)) renum.set(id, renum.size + 1);
  const fields: string[] = [];
  for (let id = 1; id < types.length; id++) {
    if (out(id)) continue;
    const t = types[id];
    const refs = t.refs.map((r) => (r === 0 ? "void" : out(r) ? `=${sigs[r]}` : `#${renum.get(r)}`));
    fields.push(`${t.kind}|${t.name}|${t.info}|${t.size ?? ""}|${t.data.join(",")}|${refs.join(",")}`);
  }
  return hashFields(fields);
}

/** Kinds pahole adds for a function, after the types (its prototype, the function, and the
 * per-CPU variables' section last). */
const FUNCTION_PHASE = new Set<number>([KIND.FUNC, KIND.FUNC_PROTO, KIND.VAR, KIND.DATASEC, KIND.DECL_TAG]);

/** Whether every type comes before the first function, as in one merged unit's encoding
 * (pahole's of vmlinux, or of an object whose units refer to each other). Pure. */
export function typesBeforeFunctions(types: readonly BtfType[]): boolean {
  const first = types.findIndex((t) => t.kind === KIND.FUNC);
  return first < 0 || types.slice(first).every((t) => FUNCTION_PHASE.has(t.kind));
}

/** The classes of the simple types of an encoding. Pure. */
export function simpleClasses(types: readonly BtfType[]): Set<string> {
  return new Set(simpleSignatures(types).filter((s, id): s is string => id > 0 && s !== undefined));
}

/** Why two encodings differ in more than simple types. */
export const NOT_SIMPLE = "a type or function that is not simple changed";

/** Whether `now` is `before` up to simple types whose classes earlier objects have, asked of
 * the earlier objects one at a time (`earlier(i)`: the classes of the i-th nearest to the
 * start, undefined when there is no more). Returns the earlier objects it took (their
 * indexes), or why not. Pure but for what `earlier` does. */
export async function sameUpToEarlierSimpleTypes(
  before: readonly BtfType[], now: readonly BtfType[],
  earlier: (i: number) => Promise<ReadonlySet<string> | undefined>,
  /** The classes of the last vmlinux .BTF (made with `before`), if at hand: every earlier
   * object's classes are among them, so a class `now` brings that it lacks has no witness. */
  lastBtf?: () => ReadonlySet<string> | undefined,
): Promise<{ readonly same: true; readonly witnesses: readonly number[] } | { readonly same: false; readonly reason: string }> {
  const sb = simpleSignatures(before);
  const sn = simpleSignatures(now);
  const had = simpleClasses(before);
  const has = simpleClasses(now);
  const classes = new Set([...had, ...has]);
  // Even with every simple type out they differ: no earlier object can make them the same.
  if (typesLeaving(before, classes, sb) !== typesLeaving(now, classes, sn)) return { same: false, reason: NOT_SIMPLE };
  const brought = [...has].filter((c) => !had.has(c));
  const last = brought.length ? lastBtf?.() : undefined;
  if (last && brought.some((c) => !last.has(c))) return { same: false, reason: "it brings a simple type that the last .BTF does not have, so no earlier object has it" };
  const found = new Set<string>();
  const witnesses: number[] = [];
  for (let i = 0; ; i++) {
    const have = await earlier(i);
    if (have === undefined) break;
    let added = false;
    for (const c of classes) if (!found.has(c) && have.has(c)) { found.add(c); added = true; }
    if (!added) continue;
    witnesses.push(i);
    if (typesLeaving(before, found, sb) === typesLeaving(now, found, sn)) return { same: true, witnesses };
  }
  return { same: false, reason: "simple types changed that no earlier object has" };
}
