// The unavoidable work of an edit, done by hand with the raw tools and timed: the FE of the
// edited objects, one thin-link, the BE of the units whose index changed, the vmlinux.o link,
// objtool, and kbuild's own final steps (modpost, modules.builtin, Makefile.vmlinux). Every
// command is rebuilt here from kbuild's `.cmd` records; no ktld code is used, so the figure
// is a yardstick for ktld, not a copy of it. Choosing which units need a BE (comparing index
// bytes) and the other bookkeeping are left out of the time: that is what ktld must do fast.
//
// Used by scripts/bench.ts on a tree of its own: `prepare` brings a make-built classic
// ThinLTO tree to natives (a full thin-link and BE, untimed), `rebuild` does one edit's work.
// In a tree of the seed's dist mode the commands are the seed's own, as kbuild recorded them
// (`vmlinux.thinlto-index`, each `<obj>.thinlto-native.o`, `vmlinux.a`, `vmlinux.o`).
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

const TIMEOUT_MS = 30 * 60_000;

export interface RawTimes {
  /** dist mode: the seed's vmlinux.a of the natives, part of its recipe. */
  archive: number;
  fe: number;
  thinLink: number;
  backend: number;
  backendJobs: number;
  vmlinuxO: number;
  objtool: number;
  final: number;
  total: number;
}

interface Ran { code: number | null; out: string; ms: number }

function runAsync(argv: readonly string[], cwd: string, env: NodeJS.ProcessEnv): Promise<Ran> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    const child = spawn(argv[0], argv.slice(1), { cwd, env, stdio: ["ignore", "pipe", "pipe"] });
    let out = "";
    child.stdout.on("data", (d: Buffer) => { out += d.toString(); });
    child.stderr.on("data", (d: Buffer) => { out += d.toString(); });
    const timer = setTimeout(() => child.kill("SIGKILL"), TIMEOUT_MS);
    child.on("close", (code) => {
      clearTimeout(timer);
      resolve({ code, out, ms: performance.now() - t0 });
    });
    child.on("error", (e) => {
      clearTimeout(timer);
      resolve({ code: -1, out: e.message, ms: performance.now() - t0 });
    });
  });
}

async function must(argv: readonly string[], cwd: string, env: NodeJS.ProcessEnv, what: string): Promise<number> {
  const r = await runAsync(argv, cwd, env);
  if (r.code !== 0) throw new Error(`rawtools: ${what} failed (exit ${r.code}):\n${argv.join(" ").slice(0, 2000)}\n${r.out.slice(-3000)}`);
  return r.ms;
}

/** `savedcmd_<target>` of kbuild's record (`cmd_` before Linux 6.3), split at kbuild's " ; "
 * command separator. */
function recorded(tree: string, target: string): string[] {
  const file = path.join(tree, path.dirname(target), `.${path.basename(target)}.cmd`);
  const lines = fs.readFileSync(file, "utf8").split("\n");
  const prefix = [`savedcmd_${target} := `, `cmd_${target} := `].find((p) => lines.some((l) => l.startsWith(p))) ?? `savedcmd_${target} := `;
  const line = lines.find((l) => l.startsWith(prefix));
  if (!line) throw new Error(`rawtools: no ${prefix.trim()} in ${file}`);
  // make's escapes in a recorded command: `$$` is `$`, `\#` is `#`.
  return line.slice(prefix.length).replace(/\$\$/g, "$").replace(/\\#/g, "#").split(" ; ").map((c) => c.trim()).filter(Boolean);
}

const native = (o: string) => o.replace(/\.o$/, ".thinlto-native.o");
const sha = (f: string) => {
  try {
    return createHash("sha256").update(fs.readFileSync(f)).digest("hex");
  } catch {
    return "-";
  }
};

export class RawTools {
  private env: NodeJS.ProcessEnv = {};
  private direct: string[] = [];
  private lazy: string[] = [];
  private flags: string[] = [];
  private objtool = "";
  /** The units the thin-link indexed, with their index and imports bytes' hashes. */
  private indexed = new Map<string, string>();
  /** A tree of the seed's CONFIG_LTO_CLANG_THIN_DIST. */
  private dist = false;

  constructor(readonly tree: string, private readonly baseEnv: NodeJS.ProcessEnv, private readonly makeVars: readonly string[], private readonly jobs = os.cpus().length) {}

  private members(archive: string): string[] {
    const r = spawnSync("llvm-ar-19", ["t", archive], { cwd: this.tree, encoding: "utf8", timeout: 60_000 });
    if (r.status !== 0) throw new Error(`rawtools: llvm-ar t ${archive}: ${r.stderr}`);
    return r.stdout.split("\n").filter(Boolean);
  }

  /** Reads the vmlinux.o link from kbuild's record; captures kbuild's exported environment
   * (what its final steps need); then a full thin-link, the BE of every unit and the link:
   * the yardstick of a first LTO link (timed from the thin-link on; in dist mode make made
   * the natives already and nothing is timed). */
  async prepare(): Promise<RawTimes | undefined> {
    this.dist = fs.existsSync(path.join(this.tree, ".vmlinux.thinlto-index.cmd"));
    const [link, objtool] = recorded(this.tree, "vmlinux.o");
    this.objtool = objtool ?? "";
    const words = link.split(/\s+/);
    let mode: "direct" | "lazy" | "" = "";
    for (let i = 1; i < words.length; i++) {
      const w = words[i];
      if (w === "-o") i++;
      else if (w === "--whole-archive") mode = "direct";
      else if (w === "--start-group") mode = "lazy";
      else if (w === "--no-whole-archive" || w === "--end-group") mode = "";
      else if (w.endsWith(".a")) (mode === "lazy" ? this.lazy : this.direct).push(...this.members(w));
      else if (w.endsWith(".o")) this.direct.push(w);
      else this.flags.push(w);
    }
    this.captureEnv();
    if (this.dist) {
      // make made the natives already.
      this.indexed = this.scanIndexes();
      return undefined;
    }
    const thinLink = await this.thinLink();
    this.indexed = this.scanIndexes();
    const units = [...this.indexed.keys()];
    const backend = await this.backend(units);
    const linked = await this.linkAll();
    const total = thinLink + backend + linked.archive + linked.vmlinuxO + linked.objtool + linked.final;
    return { fe: 0, thinLink, backend, backendJobs: units.length, ...linked, total };
  }

  /** kbuild's exported environment (what its final steps need), captured with the tree's make. */
  captureEnv(): void {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), "rawtools-env-"));
    try {
      const rule = `rawtools-%: ; @env -0 > ${tmp}/env$(file >${tmp}/ld,$(LDFLAGS_vmlinux))`;
      const r = spawnSync("make", ["-s", ...this.makeVars, `--eval=${rule}`, "rawtools-env"], { cwd: this.tree, env: this.baseEnv, timeout: 10 * 60_000 });
      if (r.status !== 0) throw new Error(`rawtools: capturing kbuild's environment: ${r.stderr}`);
      const env: NodeJS.ProcessEnv = {};
      for (const kv of fs.readFileSync(`${tmp}/env`, "utf8").split("\0")) {
        const eq = kv.indexOf("=");
        if (eq > 0 && !/^(MAKEFLAGS|MFLAGS|MAKELEVEL|MAKEOVERRIDES|GNUMAKEFLAGS)$/.test(kv.slice(0, eq))) env[kv.slice(0, eq)] = kv.slice(eq + 1);
      }
      env.LDFLAGS_vmlinux = fs.readFileSync(`${tmp}/ld`, "utf8").trimEnd();
      this.env = env;
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  }

  /** dist mode: the units of the thin-link, as it listed them. */
  private distUnits(): string[] {
    return fs.readFileSync(path.join(this.tree, "vmlinux.thinlto-index"), "utf8").split("\n").filter(Boolean);
  }

  private indexState(o: string): string {
    return `${sha(path.join(this.tree, `${o}.thinlto.bc`))}:${sha(path.join(this.tree, `${o}.imports`))}`;
  }

  /** The seed's thin-link over the link's bitcode, index files beside the objects. */
  private async thinLink(): Promise<number> {
    if (this.dist) return must(["/bin/sh", "-c", recorded(this.tree, "vmlinux.thinlto-index").join(" ; ")], this.tree, this.baseEnv, "thin-link");
    const argv = [
      "ld.lld-19", ...this.flags, "--thinlto-index-only", "--thinlto-emit-imports-files", "-o", "vmlinux.o",
      ...this.direct, "--start-lib", ...this.lazy, "--end-lib",
    ];
    const ms = await must(argv, this.tree, this.baseEnv, "thin-link");
    return ms;
  }

  /** Hashes of every index, after a thin-link (untimed bookkeeping). */
  private scanIndexes(): Map<string, string> {
    const out = new Map<string, string>();
    const units = this.dist ? this.distUnits() : [...this.direct, ...this.lazy];
    for (const o of units) if (fs.existsSync(path.join(this.tree, `${o}.thinlto.bc`))) out.set(o, this.indexState(o));
    return out;
  }

  /** The BE of `units` with the seed's flags (as in-process LTO: a section per function and datum). */
  private async backend(units: readonly string[]): Promise<number> {
    const queue = [...units];
    const t0 = performance.now();
    const worker = async () => {
      for (let o = queue.shift(); o !== undefined; o = queue.shift()) {
        if (this.dist) {
          await must(["/bin/sh", "-c", recorded(this.tree, native(o))[0]], this.tree, this.baseEnv, `BE of ${o}`);
          continue;
        }
        const fe = recorded(this.tree, o)[0].replace(/\s-Wp,-MM?D,\S+/g, "");
        const m = / -c -o (\S+) (\S+)$/.exec(fe);
        if (!m || m[1] !== o) throw new Error(`rawtools: no output and source at the end of ${o}'s FE command`);
        const cmd = `${fe.slice(0, m.index)} -ffunction-sections -fdata-sections -x ir -fno-lto -Wno-unused-command-line-argument `
          + `-fthinlto-index=${o}.thinlto.bc -c -o ${native(o)} ${o}`;
        await must(["/bin/sh", "-c", cmd], this.tree, this.baseEnv, `BE of ${o}`);
      }
    };
    await Promise.all(Array.from({ length: this.jobs }, worker));
    return performance.now() - t0;
  }

  private linkArgv(): string[] {
    const nat = (o: string) => (this.indexed.has(o) ? native(o) : o);
    const lazy = this.lazy.filter((o) => this.indexed.has(o) || !fs.readFileSync(path.join(this.tree, o)).subarray(0, 4).equals(Buffer.from("BC\xc0\xde", "latin1")));
    return ["ld.lld-19", ...this.flags, "-o", "vmlinux.o", ...this.direct.map(nat), "--start-lib", ...lazy.map(nat), "--end-lib"];
  }

  /** vmlinux.o from the natives, objtool, then kbuild's final steps. */
  private async linkAll(): Promise<Pick<RawTimes, "archive" | "vmlinuxO" | "objtool" | "final">> {
    const archive = this.dist ? await must(["/bin/sh", "-c", recorded(this.tree, "vmlinux.a").join(" ; ")], this.tree, this.env, "vmlinux.a") : 0;
    const vmlinuxO = this.dist
      ? await must(["/bin/sh", "-c", recorded(this.tree, "vmlinux.o")[0]], this.tree, this.env, "vmlinux.o link")
      : await must(this.linkArgv(), this.tree, this.baseEnv, "vmlinux.o link");
    const objtool = this.objtool ? await must(["/bin/sh", "-c", this.objtool], this.tree, this.env, "objtool") : 0;
    const t0 = performance.now();
    const srctree = this.env.srctree ?? ".";
    const mk = (f: string) => ["make", "-s", "-f", path.resolve(this.tree, srctree, "scripts", f)];
    const builtin = (async () => {
      for (const t of ["modules.builtin.modinfo", "modules.builtin"]) {
        if (fs.existsSync(path.join(this.tree, `.${t}.cmd`))) await must(["/bin/sh", "-c", recorded(this.tree, t).join(" ; ")], this.tree, this.env, t);
      }
    })();
    const vmlinux = (async () => {
      await must(mk("Makefile.modpost"), this.tree, this.env, "modpost");
      await must(mk("Makefile.vmlinux"), this.tree, this.env, "Makefile.vmlinux");
    })();
    await Promise.all([builtin, vmlinux]);
    return { archive, vmlinuxO, objtool, final: performance.now() - t0 };
  }

  /** One edit's work: FE of `objects` (the objects whose sources changed), thin-link, BE
   * of the units whose index or imports changed (and the edited ones), link. */
  async rebuild(objects: readonly string[]): Promise<RawTimes> {
    let fe = 0;
    for (const o of objects) fe += await must(["/bin/sh", "-c", recorded(this.tree, o)[0]], this.tree, this.baseEnv, `FE of ${o}`);
    const thinLink = await this.thinLink();
    const now = this.scanIndexes();
    const changed = [...now].filter(([o, h]) => this.indexed.get(o) !== h || objects.includes(o)).map(([o]) => o);
    this.indexed = now;
    const backend = await this.backend(changed);
    const link = await this.linkAll();
    const total = fe + thinLink + backend + link.archive + link.vmlinuxO + link.objtool + link.final;
    return { fe, thinLink, backend, backendJobs: changed.length, ...link, total };
  }

  /** A kernel module's `ld -r` flags and bitcode members, from kbuild's records (`.<mod>.o.cmd`,
   * `<mod>.mod`); a multi-object module only (a single-object one has no bitcode after make). */
  private moduleOf(object: string): { flags: string[]; members: string[]; objtool: string } {
    const [ld, objtool] = recorded(this.tree, object);
    const words = ld.split(/\s+/);
    const flags: string[] = [];
    for (let i = 1; i < words.length; i++) {
      if (words[i] === "-o") i++;
      else if (!words[i].startsWith("@")) flags.push(words[i]);
    }
    const members = fs.readFileSync(path.join(this.tree, object.replace(/\.o$/, ".mod")), "utf8").split("\n").filter(Boolean);
    return { flags, members, objtool: objtool ?? "" };
  }

  /** One module's thin-link, BE of `units` (all when undefined), `ld -r`, objtool, then
   * modpost, the `.mod.o` if modpost changed its source, the `.ko` link and its BTF: each as
   * kbuild recorded or defines it. Returns the steps' times. */
  private async moduleSteps(object: string, edited: readonly string[], first: boolean): Promise<RawModuleTimes> {
    const m = this.moduleOf(object);
    const thinLink = await must(["ld.lld-19", ...m.flags, "--thinlto-index-only", "--thinlto-emit-imports-files", "-o", `${object}.rawtools-thinlink`, ...m.members], this.tree, this.baseEnv, "module thin-link");
    const now = new Map(m.members.map((o) => [o, `${sha(path.join(this.tree, o))}:${this.indexState(o)}`]));
    const changed = first ? m.members : m.members.filter((o) => this.indexed.get(o) !== now.get(o) || edited.includes(o));
    for (const [o, h] of now) this.indexed.set(o, h);
    const backend = await this.backend(changed);
    const ldMs = await must(["ld.lld-19", ...m.flags, "-o", object, ...m.members.map(native)], this.tree, this.baseEnv, "module ld -r");
    const objtool = m.objtool ? await must(["/bin/sh", "-c", m.objtool], this.tree, this.env, "module objtool") : 0;
    const t0 = performance.now();
    const modC = object.replace(/\.o$/, ".mod.c");
    const before = sha(path.join(this.tree, modC));
    await must(["/bin/sh", "-c", recorded(this.tree, "Module.symvers").join(" ; ")], this.tree, this.env, "modpost");
    if (sha(path.join(this.tree, modC)) !== before) await must(["/bin/sh", "-c", recorded(this.tree, object.replace(/\.o$/, ".mod.o"))[0]], this.tree, this.env, ".mod.o");
    const ko = object.replace(/\.o$/, ".ko");
    await must(["/bin/sh", "-c", recorded(this.tree, ko).join(" ; ")], this.tree, this.env, ".ko link");
    const e = this.env;
    await must(["/bin/sh", "-c", `LLVM_OBJCOPY="${e.OBJCOPY}" ${e.PAHOLE} -J ${e.PAHOLE_FLAGS ?? ""} ${e.MODULE_PAHOLE_FLAGS ?? ""} --btf_base vmlinux ${ko} && ${e.RESOLVE_BTFIDS} -b vmlinux ${ko}`], this.tree, this.env, "module BTF");
    const final = performance.now() - t0;
    return { fe: 0, thinLink, backend, backendJobs: changed.length, link: ldMs, objtool, final, total: thinLink + backend + ldMs + objtool + final };
  }

  /** A module's first distributed build (every unit's BE), untimed by the caller's edits. */
  async prepareModule(object: string): Promise<RawModuleTimes> {
    return this.moduleSteps(object, [], true);
  }

  /** One edit of a module's member(s): their FE, then the module's steps. */
  async rebuildModule(object: string, edited: readonly string[]): Promise<RawModuleTimes> {
    let fe = 0;
    for (const o of edited) fe += await must(["/bin/sh", "-c", recorded(this.tree, o)[0]], this.tree, this.baseEnv, `FE of ${o}`);
    const r = await this.moduleSteps(object, edited, false);
    return { ...r, fe, total: r.total + fe };
  }
}

export interface RawModuleTimes {
  fe: number;
  thinLink: number;
  backend: number;
  backendJobs: number;
  /** `ld -r` of the module object. */
  link: number;
  objtool: number;
  /** modpost, the `.mod.o` if needed, the `.ko` link and its BTF. */
  final: number;
  total: number;
}
