// A reference for the natives of a classic ThinLTO tree that shares no code with ktld: the
// thin-link rebuilt from kbuild's record of the vmlinux.o link, each module's BE rebuilt
// from kbuild's record of its FE command, parsed here with this file's own few lines.
// It writes only under `outDir`; the tree is read (its bitcode and kbuild's .cmd files).
//
// What it knows is the seed's recipe (DESIGN.md, "The four stages") and one fact of lld:
// in-process ThinLTO gives every module a section per function and datum (lld/ELF/LTO.cpp,
// createConfig), so a BE that stands in for it passes -ffunction-sections -fdata-sections.
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawnBoundedAsync } from "./helpers";

const LLVM = "-19";

function savedCommand(tree: string, target: string): string {
  const cmdFile = path.join(tree, path.dirname(target), `.${path.basename(target)}.cmd`);
  const line = fs.readFileSync(cmdFile, "utf8").split("\n").find((l) => l.startsWith(`savedcmd_${target} := `));
  if (!line) throw new Error(`reference: no savedcmd_${target} in ${cmdFile}`);
  // kbuild joins the commands of one rule with " ; ": the first is the compiler or linker.
  return line.slice(`savedcmd_${target} := `.length).split(" ; ")[0].trim();
}

async function members(tree: string, archive: string): Promise<string[]> {
  const r = await spawnBoundedAsync(`llvm-ar${LLVM}`, ["t", archive], { cwd: tree, timeout: 60_000 });
  if (r.status !== 0) throw new Error(`reference: llvm-ar t ${archive}: ${r.stderr}`);
  return r.stdout.split("\n").filter(Boolean);
}

/** The thin-link kbuild's vmlinux.o link would have run in process, made to write index
 * and imports files under `outDir`. Returns the bitcode modules it indexed. */
async function thinLink(tree: string, outDir: string): Promise<string[]> {
  const words = savedCommand(tree, "vmlinux.o").split(/\s+/);
  if (words.some((w) => /['"\\]/.test(w))) throw new Error("reference: quoting in the vmlinux.o command; this reference reads plain words only");
  const [ld, ...rest] = words;
  const flags: string[] = [];
  const direct: string[] = [];
  const lazy: string[] = [];
  let whole = false;
  let group = false;
  for (let i = 0; i < rest.length; i++) {
    const w = rest[i];
    if (w === "-o") i++;
    else if (w === "--whole-archive") whole = true;
    else if (w === "--no-whole-archive") whole = false;
    else if (w === "--start-group") group = true;
    else if (w === "--end-group") group = false;
    else if (w.endsWith(".a")) {
      if (!whole && !group) throw new Error(`reference: ${w} outside --whole-archive and --start-group`);
      (whole ? direct : lazy).push(...(await members(tree, w)));
    } else if (w.endsWith(".o")) direct.push(w);
    else flags.push(w);
  }
  fs.mkdirSync(outDir, { recursive: true });
  const argv = [
    ...flags, "--thinlto-index-only", "--thinlto-emit-imports-files", `--thinlto-prefix-replace=;${outDir}/`,
    "-o", path.join(outDir, "vmlinux.o"), ...direct, "--start-lib", ...lazy, "--end-lib",
  ];
  const r = await spawnBoundedAsync(ld, argv, { cwd: tree, timeout: 10 * 60_000 });
  if (r.status !== 0) throw new Error(`reference: thin-link failed: ${r.stderr.slice(-3000)}`);
  return [...direct, ...lazy].filter((o) => fs.existsSync(path.join(outDir, `${o}.thinlto.bc`)));
}

/** The BE command of one module, from its recorded FE command. */
function backendCommand(tree: string, object: string, outDir: string): string {
  const fe = savedCommand(tree, object).replace(/\s-Wp,-MM?D,\S+/g, "");
  const m = / -c -o (\S+) (\S+)$/.exec(fe);
  if (!m || m[1] !== object) throw new Error(`reference: cannot place the output and source in the FE command of ${object}`);
  const flags = fe.slice(0, m.index);
  const native = path.join(outDir, object.replace(/\.o$/, ".thinlto-native.o"));
  fs.mkdirSync(path.dirname(native), { recursive: true });
  return `${flags} -ffunction-sections -fdata-sections -x ir -fno-lto -Wno-unused-command-line-argument `
    + `-fthinlto-index=${path.join(outDir, `${object}.thinlto.bc`)} -c -o ${native} ${object}`;
}

/** object → sha256 of the native that the seed's recipe makes for it from the tree as it is. */
export async function referenceNatives(tree: string, outDir: string, jobs = 2): Promise<Map<string, string>> {
  fs.rmSync(outDir, { recursive: true, force: true });
  const modules = await thinLink(tree, outDir);
  const queue = [...modules];
  const out = new Map<string, string>();
  const worker = async () => {
    for (let object = queue.shift(); object !== undefined; object = queue.shift()) {
      const cmd = backendCommand(tree, object, outDir);
      const r = await spawnBoundedAsync("/bin/sh", ["-c", cmd], { cwd: tree, timeout: 10 * 60_000 });
      if (r.status !== 0) throw new Error(`reference: BE of ${object} failed:\n${cmd}\n${r.stderr.slice(-3000)}`);
      const native = path.join(outDir, object.replace(/\.o$/, ".thinlto-native.o"));
      out.set(object, createHash("sha256").update(fs.readFileSync(native)).digest("hex"));
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  return out;
}
