// Boot: a fresh kernel started in qemu with an initramfs ktld assembles, and a verdict.
//
// The initramfs holds Debian's busybox-static, the tree's modules as `modules_install`
// places them (with depmod), and the user's script. Its /init mounts /proc, /sys and /dev,
// runs the script, and writes the exit status to the second serial port, which qemu writes
// to a file of its own: what the script (or the kernel) prints on the console, the first
// port, cannot pass for a verdict. The console is read for a panic and for oops/BUG/WARNING
// lines, which outrank the script's status.
import * as fs from "node:fs";
import * as path from "node:path";
import { KtldError } from "./base/errors";
import { hashFields, hashFile } from "./base/hash";
import { modulesOrder } from "./kbuild/order";
import type { BootJson } from "./store";
import { ProcessResult, runProcess } from "./base/process";
import { killPoint } from "./base/killpoint";

export const BUSYBOX = "/bin/busybox";
export const QEMU = "qemu-system-x86_64";

export const DEFAULT_BOOT_TIMEOUT_S = 60;
export const DEFAULT_BOOT_MEM_MIB = 256;

export type BootVerdict = "pass" | "fail" | "panic" | "oops" | "timeout" | "cancelled" | "error";

export interface BootOptions {
  /** The kernel build dir (vmlinux, modules.order, include/config/kernel.release). */
  readonly buildDir: string;
  /** Where initramfs images are cached and consoles kept. */
  readonly workDir: string;
  /** A script run inside the guest; its exit status is the verdict. None: booting to
   * userspace is the pass. */
  readonly run?: string;
  readonly timeoutMs: number;
  readonly memoryMiB: number;
  /** Extra kernel arguments. */
  readonly append?: string;
  readonly signal?: AbortSignal;
  /** Each console line as it arrives. */
  readonly onLine?: (line: string) => void;
}

export interface BootResult {
  readonly ok: boolean;
  readonly verdict: BootVerdict;
  /** The line that decided it: the panic or oops line, the script's exit status, what failed. */
  readonly detail: string;
  readonly ms: number;
  readonly accel: "kvm" | "tcg";
  /** The console's last lines. */
  readonly log: readonly string[];
  /** The whole console, kept in the work dir. */
  readonly consoleFile: string;
}

const LOG_TAIL = 40;

/** /dev/kvm usable by this process: qemu can use KVM, else it emulates (TCG, slower). */
export function kvmUsable(): boolean {
  try {
    fs.accessSync("/dev/kvm", fs.constants.R_OK | fs.constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

/** The kernel's console lines that decide a verdict over the script's status. */
export function consoleVerdict(lines: readonly string[]): { verdict: "panic" | "oops"; detail: string } | undefined {
  const strip = (l: string) => l.replace(/^\[\s*\d+\.\d+\]\s*/, "").trim();
  const panic = lines.find((l) => /Kernel panic - not syncing/.test(l));
  if (panic) return { verdict: "panic", detail: strip(panic) };
  const oops = lines.find((l) => /^(\[\s*\d+\.\d+\]\s*)?(Oops|BUG|WARNING)[: ]/.test(l));
  if (oops) return { verdict: "oops", detail: strip(oops) };
  return undefined;
}

/** The verdict of a boot from what it left: the console, the verdict port's contents,
 * and how qemu ended. Pure. */
export function decideVerdict(console: readonly string[], verdictPort: string, ended: { timedOut?: boolean; cancelled?: boolean; error?: string }, hasScript: boolean): { verdict: BootVerdict; detail: string } {
  if (ended.cancelled) return { verdict: "cancelled", detail: "cancelled by a newer build" };
  if (ended.error) return { verdict: "error", detail: ended.error };
  const kernel = consoleVerdict(console);
  if (kernel) return kernel;
  const m = /KTLD-VERDICT exit (\d+)/.exec(verdictPort);
  if (m) {
    const code = Number(m[1]);
    if (code === 0) return { verdict: "pass", detail: hasScript ? "the script exited 0" : "booted to userspace" };
    return { verdict: "fail", detail: `the script exited ${code}` };
  }
  if (ended.timedOut) return { verdict: "timeout", detail: "no verdict before the boot timeout" };
  return { verdict: "error", detail: "qemu exited without a verdict from the guest" };
}

function initScript(): string {
  return [
    "#!/bin/busybox sh",
    "/bin/busybox mount -t proc proc /proc",
    "/bin/busybox mount -t sysfs sysfs /sys",
    "/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null",
    "/bin/busybox --install -s /bin",
    "export PATH=/bin:/sbin",
    "echo 'ktld: init: userspace reached'",
    "cd /ktld",
    "if [ -f /ktld/run ]; then /ktld/run; st=$?; else st=0; fi",
    // The verdict port: the second serial port, a file only qemu writes on the host.
    "echo \"KTLD-VERDICT exit $st\" > /dev/ttyS1",
    "sync",
    "reboot -f",
    "",
  ].join("\n");
}

/** Host files the script names, to carry into the image: absolute paths at the same path,
 * paths relative to the script's dir under /ktld (where the script runs). System paths are
 * the guest's own (busybox's applets, /proc, ...) and are never copied. */
export function namedFiles(script: string, text: string): { host: string; image: string }[] {
  const dir = path.dirname(script);
  const out = new Map<string, string>();
  for (const word of text.match(/[\w.@+-]*\/[\w./@+-]+/g) ?? []) {
    if (/^\/(bin|sbin|usr|lib|lib64|proc|sys|dev|etc|ktld)(\/|$)/.test(word) || word.includes("..")) continue;
    const host = path.isAbsolute(word) ? word : path.resolve(dir, word);
    const st = fs.statSync(host, { throwIfNoEntry: false });
    if (!st?.isFile() || st.size > 64 * 1024 * 1024) continue;
    out.set(host, path.isAbsolute(word) ? word : path.join("/ktld", path.relative(dir, host)));
  }
  return [...out].map(([host, image]) => ({ host, image }));
}

/** The modules `modules_install` would install: modules.order's entries whose .ko exists. */
function modulesOf(buildDir: string): string[] {
  return modulesOrder(buildDir).map((o) => o.replace(/\.o$/, ".ko")).filter((ko) => fs.existsSync(path.join(buildDir, ko)));
}

/** A file's hash for the image's key (every file hashed here exists). */
const fileHash = (file: string): string => hashFile(file) ?? "-";

/** Writes a newc cpio archive of `root` (every file and dir, and /dev/console). */
async function writeCpio(root: string, out: string, signal?: AbortSignal): Promise<void> {
  const r = await runProcess(["/bin/sh", "-c", `find . | cpio -o -H newc --quiet > '${out}.tmp'`], { cwd: root, signal, timeoutMs: 120_000, tool: "cpio" });
  if (r.code !== 0) throw new KtldError(`assembling the boot initramfs failed (cpio: ${r.error ?? r.output.trim()}); is cpio installed?`);
  fs.renameSync(`${out}.tmp`, out);
}

/** The initramfs for this kernel's modules and script: built once per content, then reused. */
export async function initramfs(opts: Pick<BootOptions, "buildDir" | "workDir" | "run" | "signal">): Promise<string> {
  if (!fs.existsSync(BUSYBOX)) throw new KtldError(`booting needs ${BUSYBOX}: apt-get install busybox-static`);
  if (opts.run && !fs.existsSync(opts.run)) throw new KtldError(`--boot-run ${opts.run}: no such file`);
  const releaseFile = path.join(opts.buildDir, "include/config/kernel.release");
  const release = fs.existsSync(releaseFile) ? fs.readFileSync(releaseFile, "utf8").trim() : "unknown";
  const modules = modulesOf(opts.buildDir);
  const named = opts.run ? namedFiles(opts.run, fs.readFileSync(opts.run, "utf8")) : [];
  const key = hashFields([
    "initramfs 1", initScript(), fileHash(BUSYBOX), release, opts.run ? fileHash(opts.run) : "-",
    ...modules.flatMap((m) => [m, fileHash(path.join(opts.buildDir, m))]),
    ...named.flatMap((f) => [f.image, fileHash(f.host)]),
  ]).slice(0, 16);
  const image = path.join(opts.workDir, `initramfs-${key}.cpio`);
  if (fs.existsSync(image)) return image;
  fs.mkdirSync(opts.workDir, { recursive: true });
  for (const old of fs.readdirSync(opts.workDir)) if (/^initramfs-.*\.cpio$/.test(old)) fs.rmSync(path.join(opts.workDir, old), { force: true });
  const root = fs.mkdtempSync(path.join(opts.workDir, "root-"));
  try {
    for (const d of ["bin", "sbin", "dev", "proc", "sys", "tmp", "ktld"]) fs.mkdirSync(path.join(root, d));
    fs.copyFileSync(BUSYBOX, path.join(root, "bin/busybox"));
    fs.chmodSync(path.join(root, "bin/busybox"), 0o755);
    fs.writeFileSync(path.join(root, "init"), initScript(), { mode: 0o755 });
    if (opts.run) fs.writeFileSync(path.join(root, "ktld/run"), fs.readFileSync(opts.run), { mode: 0o755 });
    for (const f of named) {
      const to = path.join(root, f.image);
      fs.mkdirSync(path.dirname(to), { recursive: true });
      fs.copyFileSync(f.host, to);
      fs.chmodSync(to, fs.statSync(f.host).mode & 0o777);
    }
    if (modules.length) {
      const modDir = path.join(root, "lib/modules", release);
      for (const m of modules) {
        const to = path.join(modDir, "kernel", m);
        fs.mkdirSync(path.dirname(to), { recursive: true });
        fs.copyFileSync(path.join(opts.buildDir, m), to);
      }
      for (const f of ["modules.order", "modules.builtin", "modules.builtin.modinfo"]) {
        if (fs.existsSync(path.join(opts.buildDir, f))) fs.copyFileSync(path.join(opts.buildDir, f), path.join(modDir, f));
      }
      const dep = await runProcess(["depmod", "-b", root, release], { cwd: root, signal: opts.signal, timeoutMs: 60_000, tool: "depmod" });
      if (dep.code !== 0) throw new KtldError(`depmod for the boot initramfs failed: ${dep.error ?? dep.output.trim().split("\n")[0]}; is kmod installed?`);
    }
    // Without /dev/console the kernel gives init no stdout before devtmpfs is mounted.
    const node = await runProcess(["mknod", path.join(root, "dev/console"), "c", "5", "1"], { cwd: root, timeoutMs: 10_000, tool: "mknod" });
    if (node.code !== 0) throw new KtldError(`making /dev/console for the boot initramfs failed: ${node.output.trim()} (booting needs root)`);
    await writeCpio(root, image, opts.signal);
    return image;
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
}

export function qemuArgv(vmlinux: string, initrd: string, verdictFile: string, opts: Pick<BootOptions, "memoryMiB" | "append">, kvm: boolean): string[] {
  return [
    QEMU, ...(kvm ? ["-enable-kvm"] : ["-accel", "tcg"]),
    "-kernel", vmlinux, "-initrd", initrd, "-m", String(opts.memoryMiB),
    "-append", `console=ttyS0 panic=-1${opts.append ? ` ${opts.append}` : ""}`,
    "-display", "none", "-monitor", "none", "-no-reboot",
    "-serial", "stdio", "-serial", `file:${verdictFile}`,
  ];
}

/** Why KVM was given up on in this process (a nested or half-working KVM: the guest hangs
 * silent, or qemu dies with an internal KVM error); later boots go straight to TCG. */
let kvmFailed: string | undefined;

/** A KVM boot that prints nothing for this long is taken for a KVM that does not work. */
const KVM_SILENCE_MS = 15_000;

interface QemuRun { r: ProcessResult; console: string[]; port: string; silent: boolean }

async function runQemu(vmlinux: string, image: string, opts: BootOptions, kvm: boolean, watchSilence: boolean): Promise<QemuRun> {
  const verdictFile = path.join(opts.workDir, "verdict");
  fs.rmSync(verdictFile, { force: true });
  const lines: string[] = [];
  const stop = new AbortController();
  const onAbort = () => stop.abort();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  let silent = false;
  const silence = watchSilence ? setTimeout(() => {
    silent = true;
    stop.abort();
  }, KVM_SILENCE_MS) : undefined;
  const running = runProcess(qemuArgv(vmlinux, image, verdictFile, opts, kvm), {
    cwd: opts.workDir, signal: stop.signal, timeoutMs: opts.timeoutMs, tool: "qemu",
    onLine: (l) => {
      clearTimeout(silence);
      const line = l.replace(/\r$/, "");
      lines.push(line);
      opts.onLine?.(line);
    },
  });
  killPoint("boot:running");
  const r = await running;
  clearTimeout(silence);
  opts.signal?.removeEventListener("abort", onAbort);
  const console = r.stdout ? r.stdout.replace(/\r/g, "").split("\n") : lines;
  const port = fs.existsSync(verdictFile) ? fs.readFileSync(verdictFile, "latin1") : "";
  return { r, console, port, silent: silent && !opts.signal?.aborted };
}

/** Boots the build dir's vmlinux once and says how it went. */
export async function boot(opts: BootOptions): Promise<BootResult> {
  const t0 = performance.now();
  const vmlinux = path.join(opts.buildDir, "vmlinux");
  // Remembered beside the state dir's other files, so that one-shot boots do not try again.
  const failedNote = path.join(path.dirname(opts.workDir), "kvm-failed");
  if (kvmFailed === undefined && fs.existsSync(failedNote)) kvmFailed = `${fs.readFileSync(failedNote, "utf8").trim()}; delete ${failedNote} to try KVM again`;
  let kvm = kvmFailed === undefined && kvmUsable();
  const consoleFile = path.join(opts.workDir, "console.log");
  const fail = (verdict: BootVerdict, detail: string): BootResult => ({ ok: false, verdict, detail, ms: Math.round(performance.now() - t0), accel: kvm ? "kvm" : "tcg", log: [], consoleFile });
  if (!fs.existsSync(vmlinux)) return fail("error", `${vmlinux} does not exist: build it first`);
  let image: string;
  try {
    image = await initramfs(opts);
  } catch (e) {
    if (opts.signal?.aborted) return fail("cancelled", "cancelled by a newer build");
    return fail("error", (e as Error).message);
  }
  let run = await runQemu(vmlinux, image, opts, kvm, kvm);
  const kvmBroke = kvm && (run.silent || (!run.r.cancelled && run.r.code !== 0 && /kvm|KVM internal error|failed to set MSR/.test(run.r.output) && !run.port));
  if (kvmBroke) {
    kvmFailed = run.silent ? `a KVM guest printed nothing in ${KVM_SILENCE_MS / 1000} s` : run.r.output.trim().split("\n").filter((l) => /kvm|KVM|MSR/.test(l)).slice(-1)[0] ?? "qemu failed under KVM";
    kvm = false;
    fs.writeFileSync(failedNote, `${kvmFailed}\n`);
    run = await runQemu(vmlinux, image, opts, false, false);
  }
  const { r, console, port } = run;
  fs.writeFileSync(consoleFile, console.join("\n"));
  const error = r.error ?? (r.code !== 0 && !r.timedOut && !r.cancelled && !port && !consoleVerdict(console) ? `qemu exited ${r.code}: ${r.output.trim().split("\n").slice(-1)[0] ?? ""}` : undefined);
  const decided = decideVerdict(console, port, { timedOut: r.timedOut, cancelled: r.cancelled, error }, opts.run !== undefined);
  const accelNote = !kvm && kvmFailed ? ` (TCG: KVM did not work here: ${kvmFailed})` : "";
  return { ok: decided.verdict === "pass", verdict: decided.verdict, detail: `${decided.detail}${accelNote}`, ms: Math.round(performance.now() - t0), accel: kvm ? "kvm" : "tcg", log: console.filter((l) => l.trim()).slice(-LOG_TAIL), consoleFile };
}

/** A boot's verdict as the history, `--json` and `ktld why` carry it. */
export function bootJson(r: BootResult): BootJson {
  return { ok: r.ok, verdict: r.verdict, detail: r.detail, ms: r.ms, accel: r.accel, log: r.log };
}
