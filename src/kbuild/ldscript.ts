// What a kernel's final linker script (KBUILD_LDS, preprocessed: arch/x86/kernel/vmlinux.lds)
// does with a section, read from the script itself, and the vmlinux.o link that follows from it.
//
// `ld.lld -r` is quadratic in the number of `__patchable_function_entries` sections when
// every function has its own text section, as the natives of an LTO link do: each such
// SHF_LINK_ORDER orphan walks every output section of that name made so far (lld 19 and
// lld's main branch, LinkerScript::addInputSec). `CONFIG_CALL_PADDING` (call-depth tracking,
// FineIBT: defconfig and distribution kernels) gives every function one. Where the final
// link discards them anyway (x86: HAVE_DYNAMIC_FTRACE_NO_PATCHABLE puts them in
// COMMON_DISCARDS), vmlinux.o can go without them: a second `-T` script discarding them
// makes the link linear (the developer fixture's natives, 40,554 such sections: 3.8-4.1 s →
// 0.9-1.1 s, docs/benchmarks.md). The vmlinux.o
// then differs from kbuild's by those sections alone; vmlinux and System.map do not
// (test/devtree.test.ts relinks them from kbuild's own vmlinux.o command).

/** The section a relocatable link of natives is quadratic in. */
export const PATCHABLE_SECTION = "__patchable_function_entries";

/** ktld's script for vmlinux.o's link, beside `.tmp_initcalls.lds` (make clean removes `.tmp_*`). */
export const VMLINUX_O_SCRIPT = ".tmp_ktld_vmlinux.o.lds";

/** An input-section pattern of a linker script (`*`, `?`, `[...]`) as a RegExp. */
function globRegExp(glob: string): RegExp {
  let re = "";
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i];
    if (c === "*") re += ".*";
    else if (c === "?") re += ".";
    else if (c === "[") {
      const end = glob.indexOf("]", i + 1);
      if (end < 0) return /(?!)/; // not a pattern lld would take
      re += `[${glob.slice(i + 1, end).replace(/^!/, "^").replace(/\\/g, "\\\\")}]`;
      i = end;
    } else re += c.replace(/[.+^${}()|\\/]/g, "\\$&");
  }
  return new RegExp(`^${re}$`);
}

/** The [start, end) ranges of the script's `/DISCARD/ : { ... }` statements. */
function discardRanges(text: string): [number, number][] {
  const out: [number, number][] = [];
  const re = /\/DISCARD\/\s*:\s*\{/g;
  for (let m = re.exec(text); m; m = re.exec(text)) {
    let depth = 1;
    let i = m.index + m[0].length;
    for (; i < text.length && depth > 0; i++) {
      if (text[i] === "{") depth++;
      else if (text[i] === "}") depth--;
    }
    out.push([m.index, i]);
  }
  return out;
}

/** Words before `(` that open an expression or a file list, not input-section patterns. */
const NOT_SECTIONS = new Set([
  "ALIGN", "ADDR", "SIZEOF", "AT", "ASSERT", "LOADADDR", "MAX", "MIN", "DEFINED", "ABSOLUTE", "ALIGNOF", "LENGTH",
  "ORIGIN", "SEGMENT_START", "DATA_SEGMENT_ALIGN", "DATA_SEGMENT_END", "DATA_SEGMENT_RELRO_END", "CONSTANT", "NEXT",
  "BLOCK", "PROVIDE", "PROVIDE_HIDDEN", "HIDDEN", "LONG", "QUAD", "SHORT", "BYTE", "FILL", "INSERT", "OUTPUT_FORMAT",
  "OUTPUT_ARCH", "ENTRY", "EXCLUDE_FILE", "INPUT_SECTION_FLAGS", "INCLUDE", "INPUT", "GROUP", "OUTPUT", "SEARCH_DIR",
  "EXTERN", "PHDRS", "FILEHDR", "ONLY_IF_RO", "ONLY_IF_RW", "SUBALIGN",
]);

/** Each parenthesized group of `text`: where it opens, the word just before it, and its own
 * words (those of the groups nested in it left out). */
function groups(text: string): { at: number; before: string; words: string[] }[] {
  const out: { at: number; before: string; words: string[] }[] = [];
  const stack: { at: number; before: string; own: string }[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "(") {
      const before = /[\w.*?\[\]\/+-]*$/.exec(text.slice(Math.max(0, i - 200), i))![0];
      // The pattern before a nested group (`*` of `KEEP(*(...))`) is that group's, not the outer's.
      const outer = stack[stack.length - 1];
      if (outer) outer.own = outer.own.slice(0, outer.own.length - before.length);
      stack.push({ at: i, before, own: "" });
    } else if (c === ")") {
      const g = stack.pop();
      if (g) out.push({ at: g.at, before: g.before, words: g.own.split(/\s+/).filter(Boolean) });
      if (stack.length) stack[stack.length - 1].own += " ";
    } else if (stack.length) stack[stack.length - 1].own += c;
  }
  return out;
}

/** Whether every input-section pattern of `script` that names `section` is in a `/DISCARD/`
 * statement, and one is (a section no pattern names is an orphan, which the linker keeps).
 * A pattern list is a group opened by a file pattern (`*(...)`, `foo.o(...)`) or a SORT
 * keyword; expressions (`ALIGN(...)`, `(512 * 1024)`) and file lists are not. */
export function discards(script: string, section: string): boolean {
  const text = script.replace(/\/\*[\s\S]*?\*\//g, (c) => " ".repeat(c.length));
  const ranges = discardRanges(text);
  let discarded = 0;
  let kept = 0;
  for (const g of groups(text)) {
    if (!g.before || NOT_SECTIONS.has(g.before)) continue;
    for (const word of g.words) {
      if (!globRegExp(word).test(section)) continue;
      if (ranges.some(([s, e]) => g.at >= s && g.at < e)) discarded++;
      else kept++;
    }
  }
  return discarded > 0 && kept === 0;
}

/** vmlinux.o's link as ktld runs it: kbuild's, plus the extra script when the final link's
 * script discards the sections it would be quadratic in. Pure. */
export interface VmlinuxOPlan {
  /** The text of the extra `-T` script, when there is one. */
  readonly script?: string;
  readonly reason: string;
}

export function planVmlinuxO(finalScript: string | undefined, finalScriptName: string): VmlinuxOPlan {
  if (finalScript === undefined) return { reason: `kbuild's command: ${finalScriptName} could not be read, so ${PATCHABLE_SECTION} is kept` };
  if (!discards(finalScript, PATCHABLE_SECTION)) return { reason: `kbuild's command: the final link (${finalScriptName}) does not discard ${PATCHABLE_SECTION}` };
  return {
    script: `/* ktld: ${finalScriptName} discards these in the final link; ld.lld -r is quadratic in them. */\nSECTIONS { /DISCARD/ : { *(${PATCHABLE_SECTION}) } }\n`,
    reason: `without ${PATCHABLE_SECTION}: the final link (${finalScriptName}) discards them`,
  };
}
