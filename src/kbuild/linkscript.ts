// kbuild's scripts/link-vmlinux.sh as ktld runs it: the tree's own script cut at the lines of
// its main flow, so that ktld can run its parts in another order while every command stays
// the script's (its functions: vmlinux_link, gen_btf, mksysmap, kallsyms, ...).
//
// What ktld changes is when the second kallsyms link starts. kbuild links `.tmp_vmlinux1`,
// runs the first kallsyms pass on it (K1), links `.tmp_vmlinux2` with K1 and runs the second
// pass (K2), and a third if K2 is unlike K1 in size or symbols. The second link needs only
// K1's layout (its sections' sizes and its symbols), not its bytes. The kallsyms object of
// the last link (Kp) usually has that layout, so ktld links `.tmp_vmlinux2` with Kp and runs
// the second pass while the first pass runs beside it (and beside the BTF step). When K1 then
// lays out as Kp did, that link is the one kbuild makes with K1 (same inputs, same layout,
// so the same symbols and addresses), and its pass is kbuild's K2; the rest (the third-pass
// test, the final link) runs as the script has it. When K1 does not, the script's own second
// link and pass run after all.
//
// After the final link, System.map is made beside the table sort (`sysmapBesideSort`).
//
// Each part is the script's text; ktld adds only assignments of the script's own variables
// (and, for the map, an `&` and a `wait`).
// A script of another shape is run whole, as kbuild runs it.

/** The script's main flow, cut where ktld runs its parts. */
export interface LinkScript {
  /** Everything before the main flow: `set -e`, `LD="$1"` ..., the functions. */
  readonly defs: string;
  /** The main flow up to the BTF step: version-timestamp.o, the empty kallsyms object, `.tmp_vmlinux1`. */
  readonly first: string;
  /** The BTF step (`gen_btf .tmp_vmlinux1`), with its `if`. */
  readonly btf: string;
  /** The kallsyms block (`if is_enabled CONFIG_KALLSYMS; then` ... `fi`), one line per entry. */
  readonly passes: readonly string[];
  /** In `passes`: the first pass (`sysmap_and_kallsyms .tmp_vmlinux1`) and the second link (`vmlinux_link .tmp_vmlinux2`, followed by its pass). */
  readonly at: { readonly firstPass: number; readonly secondLink: number };
  /** What follows: the final link, BTF ids, System.map, sorting, the kallsyms check. */
  readonly rest: string;
}

const MAIN_START = /^\$\{MAKE\} -f "\$\{srctree\}\/scripts\/Makefile\.build" obj=init init\/version-timestamp\.o$/;
/** The function the parts below call in two halves (mksysmap, then kallsyms). */
const SYSMAP_AND_KALLSYMS = 'sysmap_and_kallsyms()\n{\n\tmksysmap "${1}" "${1}.syms"\n\tkallsyms "${1}.syms" "${1}.kallsyms"\n\n\tkallsyms_sysmap=${1}.syms\n}';

/** Cuts the tree's link-vmlinux.sh; a reason instead when it is not of the shape ktld knows
 * (6.12's), which is then run whole. Pure. */
export function readLinkScript(text: string): LinkScript | { readonly unknown: string } {
  const lines = text.split("\n");
  const only = (re: RegExp, from = 0, to = lines.length): number => {
    const found = lines.map((l, i) => (i >= from && i < to && re.test(l) ? i : -1)).filter((i) => i >= 0);
    return found.length === 1 ? found[0] : -1;
  };
  const main = only(MAIN_START);
  if (main < 0) return { unknown: "no `${MAKE} ... init/version-timestamp.o` line starting its main flow" };
  if (!text.includes(SYSMAP_AND_KALLSYMS)) return { unknown: "its sysmap_and_kallsyms is not mksysmap then kallsyms" };
  const btfIf = only(/^\tif ! gen_btf \.tmp_vmlinux1; then$/, main) - 1;
  if (btfIf < main || lines[btfIf] !== "if is_enabled CONFIG_DEBUG_INFO_BTF; then") return { unknown: "no `gen_btf .tmp_vmlinux1` step after .tmp_vmlinux1" };
  const firstPass = only(/^\tsysmap_and_kallsyms \.tmp_vmlinux1$/, btfIf);
  const secondLink = only(/^\tvmlinux_link \.tmp_vmlinux2$/, btfIf);
  if (firstPass < 0 || secondLink < firstPass || lines[secondLink + 1] !== "\tsysmap_and_kallsyms .tmp_vmlinux2") {
    return { unknown: "its kallsyms passes are not `sysmap_and_kallsyms .tmp_vmlinux1`, then `vmlinux_link .tmp_vmlinux2` and its pass" };
  }
  // The kallsyms block: from its `if` (the last before the first pass) to the first `fi` at
  // the top level after the second pass.
  let open = firstPass;
  while (open > btfIf && lines[open] !== "if is_enabled CONFIG_KALLSYMS; then") open--;
  const close = lines.findIndex((l, i) => i > secondLink && l === "fi");
  if (open <= btfIf || close < 0) return { unknown: "its kallsyms passes are not in one `if is_enabled CONFIG_KALLSYMS` block" };
  for (let i = open + 1; i < firstPass; i++) {
    if (!/^\s*(#.*)?$/.test(lines[i]) && lines[i] !== "\tstrip_debug=1") return { unknown: `an unknown line before the first kallsyms pass: ${lines[i].trim()}` };
  }
  if (!lines.slice(close + 1).some((l) => l === "vmlinux_link vmlinux")) return { unknown: "no `vmlinux_link vmlinux` after the kallsyms passes" };
  const join = (a: number, b: number) => lines.slice(a, b).join("\n");
  return {
    defs: join(0, main),
    first: join(main, btfIf),
    btf: join(btfIf, open),
    passes: lines.slice(open, close + 1),
    at: { firstPass: firstPass - open, secondLink: secondLink - open },
    rest: join(close + 1, lines.length),
  };
}

/** The script's lines after the final link with System.map made beside the table sort that
 * follows it. kbuild makes the map (`mksysmap vmlinux System.map`: nm of the image's symbols,
 * through sed) and then sorts the image's tables in place (`sorttable vmlinux`: its own nm,
 * then scripts/sorttable rewriting the bytes of the sorted sections). The sort changes no
 * symbol, section header or string that nm reads, so the map is the same bytes made before,
 * during or after it. The map runs in the background from its own line, and the script waits
 * for it (its status, under the script's `set -e`) right after the sort block, before the
 * kallsyms check compares it. Undefined for another shape (the lines run as they are). Pure. */
export function sysmapBesideSort(rest: string): string | undefined {
  const lines = rest.split("\n");
  const map = lines.flatMap((l, i) => (l === "mksysmap vmlinux System.map" ? [i] : []));
  if (map.length !== 1) return undefined;
  let sort = map[0] + 1;
  while (sort < lines.length && lines[sort].trim() === "") sort++;
  if (lines[sort] !== "if is_enabled CONFIG_BUILDTIME_TABLE_SORT; then") return undefined;
  const end = lines.findIndex((l, i) => i > sort && l === "fi");
  if (end < 0 || lines.slice(sort, end).some((l) => l.includes("System.map") || /\bktld_/.test(l))) return undefined;
  const out = [...lines];
  out[map[0]] = "mksysmap vmlinux System.map & ktld_sysmap=$!";
  out.splice(end + 1, 0, "wait ${ktld_sysmap}");
  return out.join("\n");
}

/** Shell variables the script's parts hand on to each other. */
export const SCRIPT_STATE = ["btf_vmlinux_bin_o", "kallsymso", "kallsymso_prev", "kallsyms_sysmap", "strip_debug"] as const;
export type ScriptState = Partial<Record<(typeof SCRIPT_STATE)[number], string>>;

/** Lines that write the state to `file` (one `name=value` per line). */
export function dumpState(file: string): string {
  return `\n{ ${SCRIPT_STATE.map((v) => `printf '%s=%s\\n' ${v} "\${${v}:-}"`).join("; ")}; } > ${shq(file)}\n`;
}

/** The state `dumpState` wrote. */
export function parseState(text: string): ScriptState {
  const out: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const eq = line.indexOf("=");
    if (eq > 0 && (SCRIPT_STATE as readonly string[]).includes(line.slice(0, eq))) out[line.slice(0, eq)] = line.slice(eq + 1);
  }
  return out;
}

function shq(s: string): string {
  return `'${s.replace(/'/g, "'\\''")}'`;
}

/** Assignments that put `state` back (every variable: one it does not have is empty). */
export function restoreState(state: ScriptState): string {
  return assign(Object.fromEntries(SCRIPT_STATE.map((v) => [v, state[v] ?? ""])));
}

/** Assignments of the variables `vars` has, on one line. */
function assign(vars: ScriptState): string {
  return Object.entries(vars).map(([k, v]) => `${k}=${shq(v ?? "")}`).join("; ");
}

/** The first pass and the second link, as ktld ran them beside each other: its kallsyms object. */
export const FIRST_PASS = { syms: ".tmp_vmlinux1.syms", object: ".tmp_vmlinux1.kallsyms.o" } as const;
export const SECOND_PASS = { syms: ".tmp_vmlinux2.syms", object: ".tmp_vmlinux2.kallsyms.o" } as const;

/** The parts ktld runs, in its order. Pure. */
export const parts = {
  /** The whole script, as kbuild runs it. */
  whole: (s: LinkScript): string => [s.defs, s.first, s.btf, ...s.passes, s.rest].join("\n"),
  first: (s: LinkScript): string => `${s.defs}\n${s.first}`,
  btf: (s: LinkScript, state: ScriptState): string => `${s.defs}\n${restoreState(state)}\n${s.btf}`,
  /** The main flow up to the BTF step with `.tmp_vmlinux1` linked as `output` instead (for
   * pahole run ahead, src/btfahead.ts); undefined when that link is not one line of it. */
  ahead: (s: LinkScript, output: string): string | undefined => {
    const lines = s.first.split("\n");
    const at = lines.flatMap((l, i) => (/^\s*vmlinux_link \.tmp_vmlinux1$/.test(l) ? [i] : []));
    if (at.length !== 1 || !/^[\w.-]+$/.test(output)) return undefined;
    lines[at[0]] = lines[at[0]].replace(".tmp_vmlinux1", output);
    return `${s.defs}\n${lines.join("\n")}`;
  },
  /** The first pass's symbol list (its NM), before the BTF step may rewrite `.tmp_vmlinux1`. */
  firstSyms: (s: LinkScript): string => `${s.defs}\nmksysmap .tmp_vmlinux1 ${FIRST_PASS.syms}`,
  /** The first pass's kallsyms object, from that list. */
  firstPass: (s: LinkScript): string => `${s.defs}\nkallsyms ${FIRST_PASS.syms} .tmp_vmlinux1.kallsyms`,
  /** The second link with the last link's kallsyms object `kp`, and its pass. */
  secondFromLast: (s: LinkScript, state: ScriptState, kp: string): string =>
    `${s.defs}\n${restoreState({ ...state, strip_debug: "1", kallsymso: kp })}\nvmlinux_link .tmp_vmlinux2\nsysmap_and_kallsyms .tmp_vmlinux2`,
  /** The kallsyms block and the rest. `done`: the passes ktld already ran (the first beside
   * the BTF step; the second too when its link with the last kallsyms object is kbuild's),
   * each line of the script that ran them replaced by the variables it would have set. */
  finish: (s: LinkScript, state: ScriptState, done: "none" | "first" | "second"): string => {
    const passes = [...s.passes];
    if (done !== "none") {
      passes[s.at.firstPass] = `\t${assign({ kallsymso_prev: state.kallsymso ?? "", kallsymso: FIRST_PASS.object, kallsyms_sysmap: FIRST_PASS.syms })}`;
    }
    if (done === "second") {
      passes[s.at.secondLink] = `\t${assign({ kallsymso_prev: FIRST_PASS.object, kallsymso: SECOND_PASS.object, kallsyms_sysmap: SECOND_PASS.syms })}`;
      passes[s.at.secondLink + 1] = "";
    }
    return [s.defs, restoreState(state), ...passes, sysmapBesideSort(s.rest) ?? s.rest].join("\n");
  },
};

/** kbuild's recorded vmlinux command (`.vmlinux.cmd`): the script, its three arguments, and
 * the arch's post-link step after it. Undefined for another shape. Pure. */
export function parseVmlinuxCommand(cmd: string): { script: string; args: [string, string, string]; postlink: string } | undefined {
  const m = /^\s*(\S*link-vmlinux\.sh) "([^"]*)" "([^"]*)" "([^"]*)";\s*(.*)$/.exec(cmd);
  if (!m) return undefined;
  return { script: m[1], args: [m[2], m[3], m[4]], postlink: m[5].trim() === "true" ? "" : m[5].trim() };
}

/** The layout of an object as a link sees it: its sections (name, flags, size, alignment)
 * and its symbols but file names (name, section, value, size, type, binding). */
export interface ObjectLayout {
  readonly sections: readonly string[];
  readonly symbols: readonly string[];
}

/** Whether the second link may use `last` in place of the first pass's object: the same
 * layout. Pure. */
export function sameLayout(first: ObjectLayout, last: ObjectLayout): { same: true } | { same: false; why: string } {
  if (first.sections.join("\n") !== last.sections.join("\n")) return { same: false, why: "its sections differ in size" };
  if (first.symbols.join("\n") !== last.symbols.join("\n")) return { same: false, why: "its symbols differ" };
  return { same: true };
}
