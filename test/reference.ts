// A reference for the natives of a classic ThinLTO tree that shares no code with ktld: the
// thin-link rebuilt from kbuild's record of the vmlinux.o link (or of a kernel module's
// link), each module's BE rebuilt
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

/** kbuild's recorded command of `target` (its whole line: `savedcmd_` since 6.3, `cmd_` before). */
export function recordedCommand(tree: string, target: string): string {
  const cmdFile = path.join(tree, path.dirname(target), `.${path.basename(target)}.cmd`);
  for (const l of fs.readFileSync(cmdFile, "utf8").split("\n")) {
    for (const prefix of [`savedcmd_${target} := `, `cmd_${target} := `]) if (l.startsWith(prefix)) return l.slice(prefix.length);
  }
  throw new Error(`reference: no savedcmd_${target} (or cmd_) in ${cmdFile}`);
}

function savedCommand(tree: string, target: string): string {
  // kbuild joins the commands of one rule with " ; ": the first is the compiler or linker.
  return recordedCommand(tree, target).split(" ; ")[0].trim();
}

async function members(tree: string, archive: string): Promise<string[]> {
  const r = await spawnBoundedAsync(`llvm-ar${LLVM}`, ["t", archive], { cwd: tree, timeout: 60_000 });
  if (r.status !== 0) throw new Error(`reference: llvm-ar t ${archive}: ${r.stderr}`);
  return r.stdout.split("\n").filter(Boolean);
}

/** The thin-link kbuild's link of `target` (vmlinux.o, or a kernel module's `.o`, whose
 * members kbuild lists in a response file) would have run in process, made to write index
 * and imports files under `outDir`. Returns the bitcode modules it indexed. */
async function thinLink(tree: string, outDir: string, target: string): Promise<string[]> {
  const words = savedCommand(tree, target).split(/\s+/);
  if (words.some((w) => /['"\\]/.test(w))) throw new Error(`reference: quoting in the ${target} command; this reference reads plain words only`);
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
    else if (w.startsWith("@")) direct.push(...fs.readFileSync(path.join(tree, w.slice(1)), "utf8").split(/\s+/).filter(Boolean));
    else flags.push(w);
  }
  fs.mkdirSync(outDir, { recursive: true });
  const argv = [
    ...flags, "--thinlto-index-only", "--thinlto-emit-imports-files", `--thinlto-prefix-replace=;${outDir}/`,
    "-o", path.join(outDir, path.basename(target)), ...direct, "--start-lib", ...lazy, "--end-lib",
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

const sha256 = (b: Buffer | string) => createHash("sha256").update(b).digest("hex");

/** What one BE compile reads, by content: its command (the output dir left out), its index
 * shard, its bitcode and the bitcode of every module its imports file names. */
function backendInputs(tree: string, object: string, outDir: string, cmd: string, hashOf: (file: string) => string): string {
  const imports = fs.readFileSync(path.join(outDir, `${object}.imports`), "utf8").split("\n").filter(Boolean);
  const parts = [cmd.split(outDir).join("<out>"), hashOf(path.join(outDir, `${object}.thinlto.bc`)), hashOf(path.join(tree, object))];
  for (const m of imports) parts.push(m, hashOf(path.resolve(tree, m)));
  return sha256(parts.join("\0"));
}

/** object → sha256 of the native that the seed's recipe makes for it from the tree as it is.
 * `memo` (the caller's, kept across calls) maps a BE compile's inputs by content to its
 * native's hash: a compile whose inputs were compiled before is not run again. */
export async function referenceNatives(tree: string, outDir: string, jobs = 2, target = "vmlinux.o", memo?: Map<string, string>): Promise<Map<string, string>> {
  fs.rmSync(outDir, { recursive: true, force: true });
  const modules = await thinLink(tree, outDir, target);
  const queue = [...modules];
  const out = new Map<string, string>();
  // A bitcode file is read once per call, however many units import from it.
  const hashes = new Map<string, string>();
  const hashOf = (file: string) => hashes.get(file) ?? hashes.set(file, sha256(fs.readFileSync(file))).get(file)!;
  const worker = async () => {
    for (let object = queue.shift(); object !== undefined; object = queue.shift()) {
      const cmd = backendCommand(tree, object, outDir);
      const inputs = memo && backendInputs(tree, object, outDir, cmd, hashOf);
      const known = inputs && memo.get(inputs);
      if (known) {
        out.set(object, known);
        continue;
      }
      const r = await spawnBoundedAsync("/bin/sh", ["-c", cmd], { cwd: tree, timeout: 10 * 60_000 });
      if (r.status !== 0) throw new Error(`reference: BE of ${object} failed:\n${cmd}\n${r.stderr.slice(-3000)}`);
      const native = path.join(outDir, object.replace(/\.o$/, ".thinlto-native.o"));
      out.set(object, sha256(fs.readFileSync(native)));
      if (inputs) memo.set(inputs, out.get(object)!);
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
  return out;
}

const isBitcodeFile = (file: string) => {
  const fd = fs.openSync(file, "r");
  try {
    const head = Buffer.alloc(4);
    fs.readSync(fd, head, 0, 4, 0);
    return head.equals(Buffer.from([0x42, 0x43, 0xc0, 0xde]));
  } finally {
    fs.closeSync(fd);
  }
};

/** vmlinux.o as kbuild's own recorded command links it when the bitcode of its archives has
 * become natives (`X.thinlto-native.o` beside each `X.o`, the seed's names), followed by
 * the rest of kbuild's command (objtool): the archives' members in their order, the
 * natives in place of the bitcode, the libraries' members lazily. Written to `tree/vmlinux.o`. */
export async function referenceVmlinuxO(tree: string): Promise<void> {
  const full = recordedCommand(tree, "vmlinux.o");
  const [link, ...after] = full.split(" ; ");
  const words = link.trim().split(/\s+/);
  if (words.some((w) => /['"\\]/.test(w))) throw new Error("reference: quoting in the vmlinux.o command; this reference reads plain words only");
  const nativeOf = (m: string) => {
    const native = m.replace(/\.o$/, ".thinlto-native.o");
    if (fs.existsSync(path.join(tree, native))) return native;
    return isBitcodeFile(path.join(tree, m)) ? undefined : m;
  };
  const argv: string[] = [];
  let whole = false;
  for (const w of words.slice(1)) {
    if (w === "--whole-archive") whole = true;
    else if (w === "--no-whole-archive") whole = false;
    else if (w === "--start-group" || w === "--end-group") continue;
    else if (w.endsWith(".a") && !w.startsWith("-")) {
      const ms = await members(tree, w);
      if (whole) {
        for (const m of ms) {
          const n = nativeOf(m);
          if (!n) throw new Error(`reference: ${m} (in ${w}) is bitcode and has no native`);
          argv.push(n);
        }
      } else {
        // A library member the thin-link did not load has no native: lazily offered, as
        // the library offered it, it stays out unless something needs it.
        argv.push("--start-lib", ...ms.map((m) => nativeOf(m) ?? m), "--end-lib");
      }
    } else argv.push(w);
  }
  const r = await spawnBoundedAsync(words[0], argv, { cwd: tree, timeout: 20 * 60_000 });
  if (r.status !== 0) throw new Error(`reference: the vmlinux.o link failed: ${r.stderr.slice(-3000)}`);
  for (const c of after) {
    const s = await spawnBoundedAsync("/bin/sh", ["-c", c.trim()], { cwd: tree, timeout: 20 * 60_000 });
    if (s.status !== 0) throw new Error(`reference: ${c.trim()} failed: ${s.stderr.slice(-3000)}`);
  }
}

/** Asserts that `tree`'s vmlinux is what kbuild's own link makes of its natives: kbuild's
 * recorded `vmlinux.o` command over them (referenceVmlinuxO), then kbuild's `make vmlinux`,
 * which must not have linked `vmlinux.o` itself (had it found anything out of date before
 * vmlinux.o, its in-process LTO would have made it, and the comparison would not be this one). */
export async function assertKbuildLink(tree: string, env: NodeJS.ProcessEnv, makeArgs: readonly string[]): Promise<void> {
  const hashOf = (f: string) => sha256(fs.readFileSync(f));
  const ours = hashOf(path.join(tree, "vmlinux"));
  await referenceVmlinuxO(tree);
  const r = await spawnBoundedAsync("make", [...makeArgs, "vmlinux"], { cwd: tree, env, timeout: 20 * 60_000 });
  if (r.status !== 0) throw new Error(`kbuild's make vmlinux failed: ${r.stderr.slice(-3000)}`);
  if (/^\s+LD\s+vmlinux\.o$/m.test(r.stdout)) throw new Error("make linked vmlinux.o itself");
  if (hashOf(path.join(tree, "vmlinux")) !== ours) throw new Error("vmlinux is not what kbuild's own link makes of the natives");
}
