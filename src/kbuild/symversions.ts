// Symbol versions (CONFIG_MODVERSIONS): kbuild's rule for an object does more than its
// recorded compile. After the compile and fixdep, `gen_symversions` (scripts/Makefile.build)
// looks for exported symbols in the object (`$(NM) $@ | grep ' __export_symbol_'`) and, if
// there are any, runs genksyms over the preprocessed source and appends its `#SYMVER name
// crc` lines to the object's `.cmd` file; modpost reads the CRCs from there. An FE replay
// that rewrote the `.cmd` file without them would drop those CRCs from vmlinux.symvers.
import * as fs from "node:fs";
import * as path from "node:path";
import { quote } from "../base/shell";
import { cmdFilePath } from "./cmdfile";

/** The `#SYMVER` lines of an object's `.cmd` file as it is now. */
export function symverLines(buildDir: string, object: string): string[] {
  try {
    return fs.readFileSync(path.join(buildDir, cmdFilePath(object)), "utf8").split("\n").filter((l) => l.startsWith("#SYMVER "));
  } catch {
    return [];
  }
}

/** Whether `nm` output lists an exported symbol (kbuild's test). */
export function exportsSymbols(nmOutput: string): boolean {
  return / __export_symbol_/.test(nmOutput);
}

/** kbuild's `cmd_gensymtypes_c` for a C object, from its recorded compile: the compiler
 * and c_flags as recorded, as the preprocessor (`$(CPP) -D__GENKSYMS__ $(c_flags) $<`),
 * piped into genksyms. Undefined when the record is not a plain `... -c -o obj src`
 * compile of a C file (then the caller keeps the object's old lines). */
export function genksymsCommand(buildDir: string, object: string, compile: string, source: string | undefined): string | undefined {
  if (!source?.endsWith(".c")) return undefined;
  const first = compile.split(" ; ")[0];
  const tail = ` -c -o ${object} ${source}`;
  if (!first.endsWith(tail)) return undefined;
  // The depfile belongs to the compile (fixdep has read it): the preprocessor must not rewrite it.
  const flags = first.slice(0, -tail.length).replace(/\s-Wp,-MM?D,\S+/g, "");
  const symref = object.replace(/\.o$/, ".symref");
  const ref = fs.existsSync(path.join(buildDir, symref)) ? symref : "/dev/null";
  return `${flags} -E -D__GENKSYMS__ ${source} | scripts/genksyms/genksyms -r ${quote(ref)}`;
}
