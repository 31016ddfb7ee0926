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
// makes the link linear (synthetic objects, 40k sections: 133 s → 0.66 s). The vmlinux.o
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

/** Whether every input-section pattern of `script` that names `section` is in a `/DISCARD/`
 * statement, and one is (a section no pattern names is an orphan, which the linker keeps).
 * Conservative: any word in parentheses that could match counts, so an unusual script
 * reads as "kept". */
export function discards(script: string, section: string): boolean {
  const text = script.replace(/\/\*[\s\S]*?\*\//g, (c) => " ".repeat(c.length));
  const ranges = discardRanges(text);
  let discarded = 0;
  let kept = 0;
  // Innermost parentheses hold the patterns: `*(a b)`, `KEEP(*(a))`, `SORT(*(a))`.
  const group = /\(([^()]*)\)/g;
  for (let m = group.exec(text); m; m = group.exec(text)) {
    const at = m.index;
    for (const word of m[1].split(/\s+/).filter(Boolean)) {
      if (!globRegExp(word).test(section)) continue;
      if (ranges.some(([s, e]) => at >= s && at < e)) discarded++;
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
