// The kernel fixtures: Debian's linux-source-6.12 with Clang ThinLTO, built once per machine
// and copied per test.
//
// A copy must be a valid build tree at any path, so no fixture records an absolute path:
// the thin and dist fixtures are built in-tree (kbuild records relative paths); the
// developer fixture is built out of tree into `linux/out` (O=out), where kbuild sets
// srctree to `..`, and with -fdebug-compilation-dir=. so that debug info names no absolute
// directory either. A copy of `linux/` (sources and out/) then builds on its own.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export const KERNEL_TARBALL = "/usr/src/linux-source-6.12.tar.xz";
/** Linux 6.1 LTS (Debian's linux-source-6.1), for the `thin61` fixture. */
export const KERNEL_61_TARBALL = "/usr/src/linux-source-6.1.tar.xz";
export const LLVM_SUFFIX = "-19";

/** Options on top of tinyconfig. IKCONFIG gives an object that .incbin's a file
 * (kernel/configs.o); PVH + printk + serial make the result bootable by qemu -kernel. */
export const CONFIG_FRAGMENT: readonly string[] = [
  "-d LTO_NONE", "-e LTO_CLANG_THIN",
  "-e IKCONFIG",
  "-e 64BIT", "-e HYPERVISOR_GUEST", "-e PVH", "-e PRINTK", "-e TTY", "-e SERIAL_8250", "-e SERIAL_8250_CONSOLE",
];

/** The fixtures: `thin` is stock 6.12 in ThinLTO, tinyconfig, vmlinux only; `dist` is 6.12
 * with the seed's series backported (scripts/kbuild-thinlto-dist-6.12.patch) in
 * CONFIG_LTO_CLANG_THIN_DIST; `dev` is what kernel developers build: O=, modules (ext4 and
 * loop as =m), MODVERSIONS, kallsyms, DWARF5 debug info and BTF, `make all`. */
export type FixtureVariant = "thin" | "dist" | "dev" | "dev-nolto" | "defconfig" | "defconfig-nolto" | "thin61";

/** Out of tree (O=out), as developers build: the developer fixture and x86_64 defconfig.
 * `defconfig` is x86_64_defconfig + ThinLTO, `make all` (vmlinux, its modules, bzImage): the
 * size of tree #11's one-off measures. No test and no CI run uses it (it builds for hours
 * here); `npm run bench -- --fixture defconfig` does, and `defconfig-nolto` (kbuild's own
 * x86_64_defconfig, no LTO) is its `--lto-off` column. */
export function outOfTree(variant: FixtureVariant): boolean {
  return variant === "dev" || variant === "dev-nolto" || variant === "defconfig" || variant === "defconfig-nolto";
}

/** `thin61`: Linux 6.1 LTS, the thin fixture's options and what a boot to a busybox
 * initramfs needs (an uncompressed cpio only, as the developer fixture's), in-tree. */
export const THIN61_FRAGMENT: readonly string[] = [
  ...CONFIG_FRAGMENT,
  "-e BLK_DEV_INITRD", "-d RD_GZIP", "-d RD_BZIP2", "-d RD_LZMA", "-d RD_XZ", "-d RD_LZO", "-d RD_LZ4", "-d RD_ZSTD",
  "-e BINFMT_ELF", "-e BINFMT_SCRIPT", "-e PROC_FS", "-e SYSFS", "-e DEVTMPFS",
  // Kernel modules that need nothing tinyconfig lacks: xz_dec (four members, exports; it
  // selects crc32 and bitrev, modules too) and crc-ccitt (a single object).
  "-e MODULES", "-m XZ_DEC", "-m CRC_CCITT",
];

/** The developer fixture's options, on top of tinyconfig + kvm_guest.config. */
export const DEV_CONFIG_FRAGMENT: readonly string[] = [
  ...CONFIG_FRAGMENT,
  "-e MODULES", "-e MODULE_UNLOAD", "-e MODVERSIONS", "-e KALLSYMS",
  "-e DEBUG_KERNEL", "-d DEBUG_INFO_NONE", "-e DEBUG_INFO_DWARF5", "-e BPF_SYSCALL", "-e DEBUG_INFO_BTF",
  "-e BLOCK", "-e BLK_DEV", "-m BLK_DEV_LOOP", "-m EXT4_FS",
  // What a busybox initramfs needs (the boot tests read /proc/kallsyms and load modules):
  // an uncompressed cpio only. Every RD_* decompressor is off: each would link a -O3
  // library (lib/lz4, ...) into vmlinux for nothing a developer's test boot uses.
  "-e BLK_DEV_INITRD", "-d RD_GZIP", "-d RD_BZIP2", "-d RD_LZMA", "-d RD_XZ", "-d RD_LZO", "-d RD_LZ4", "-d RD_ZSTD",
  "-e PROC_FS", "-e SYSFS", "-e DEVTMPFS", "-e BINFMT_SCRIPT",
  // CPU mitigations with call-depth tracking, as defconfig and distribution kernels have:
  // CALL_PADDING gives every function a __patchable_function_entries section, which makes
  // ld.lld -r quadratic (the cost real trees pay at vmlinux.o), plus retpolines and return
  // thunks for objtool.
  "-e CPU_MITIGATIONS", "-e MITIGATION_RETPOLINE", "-e MITIGATION_RETHUNK", "-e MITIGATION_CALL_DEPTH_TRACKING",
];

/** The developer fixture without LTO (what kernel developers build while they iterate): the
 * benchmark's LTO-off column (`npm run bench -- --fixture dev --lto-off`); no test uses it. */
const DEV_NOLTO_FRAGMENT: readonly string[] = [...DEV_CONFIG_FRAGMENT.filter((o) => o !== "-e LTO_CLANG_THIN" && o !== "-d LTO_NONE"), "-d LTO_CLANG_THIN", "-e LTO_NONE"];

/** Options the developer fixture must end up with (olddefconfig may drop what it cannot have). */
const DEV_REQUIRED = [
  "CONFIG_LTO_CLANG_THIN=y", "CONFIG_MODULES=y", "CONFIG_MODVERSIONS=y", "CONFIG_KALLSYMS=y", "CONFIG_DEBUG_INFO_DWARF5=y",
  "CONFIG_DEBUG_INFO_BTF=y", "CONFIG_BLK_DEV_LOOP=m", "CONFIG_EXT4_FS=m", "CONFIG_PVH=y", "CONFIG_SERIAL_8250_CONSOLE=y",
  "CONFIG_BLK_DEV_INITRD=y", "CONFIG_PROC_FS=y", "CONFIG_SYSFS=y", "CONFIG_DEVTMPFS=y", "CONFIG_BINFMT_SCRIPT=y",
  "CONFIG_CALL_PADDING=y", "CONFIG_MITIGATION_CALL_DEPTH_TRACKING=y",
];

/** Where the developer fixture's build dir is, inside a copy of its `linux/`. */
export const DEV_BUILD_DIR = "out";

/** The developer fixture is built, and must be rebuilt, with these in make's environment:
 * debug info that names no absolute directory, so that copies at other paths make the same
 * bytes. (Only for it: in the other fixtures they would change every command line.) */
const DEV_ENV: Readonly<Record<string, string>> = {
  KCFLAGS: "-fdebug-compilation-dir=.",
  KAFLAGS: "-fdebug-compilation-dir=.",
};

export const DIST_PATCH = path.join(__dirname, "..", "..", "scripts", "kbuild-thinlto-dist-6.12.patch");

/** defconfig: kbuild's x86_64_defconfig with ThinLTO in place of no LTO. */
const DEFCONFIG_FRAGMENT: readonly string[] = ["-d LTO_NONE", "-e LTO_CLANG_THIN"];
/** defconfig-nolto: kbuild's x86_64_defconfig as it is (no LTO). */
const DEFCONFIG_NOLTO_FRAGMENT: readonly string[] = ["-d LTO_CLANG_THIN", "-e LTO_NONE"];

function configFragment(variant: FixtureVariant): readonly string[] {
  if (variant === "dev") return DEV_CONFIG_FRAGMENT;
  if (variant === "dev-nolto") return DEV_NOLTO_FRAGMENT;
  if (variant === "defconfig") return DEFCONFIG_FRAGMENT;
  if (variant === "defconfig-nolto") return DEFCONFIG_NOLTO_FRAGMENT;
  if (variant === "thin61") return THIN61_FRAGMENT;
  return variant === "thin" ? CONFIG_FRAGMENT : CONFIG_FRAGMENT.map((o) => (o === "-e LTO_CLANG_THIN" ? "-e LTO_CLANG_THIN_DIST" : o));
}

/** Pinned so that two builds of the same source state are byte-identical. */
export const REPRODUCIBLE_ENV: Readonly<Record<string, string>> = {
  KBUILD_BUILD_TIMESTAMP: "Thu Jan  1 00:00:00 UTC 2026",
  KBUILD_BUILD_USER: "ktld",
  KBUILD_BUILD_HOST: "fixture",
  KBUILD_BUILD_VERSION: "1",
};

export const MAKE_ARGS: readonly string[] = [`LLVM=${LLVM_SUFFIX}`, "ARCH=x86_64"];

export function fixtureCacheRoot(): string {
  return process.env.KTLD_FIXTURE_CACHE ?? path.join(os.homedir(), ".cache", "ktld", "fixtures");
}

function clangVersion(): string {
  const r = spawnSync(`clang${LLVM_SUFFIX}`, ["--version"], { encoding: "utf8", timeout: 60_000 });
  if (r.status !== 0) throw new Error(`clang${LLVM_SUFFIX} not found: apt-get install clang-19 lld-19 llvm-19`);
  return r.stdout.split("\n")[0];
}

function tarballOf(variant: FixtureVariant): string {
  return variant === "thin61" ? KERNEL_61_TARBALL : KERNEL_TARBALL;
}

function kernelIdentity(tarball = KERNEL_TARBALL): string {
  const st = fs.statSync(tarball, { throwIfNoEntry: false });
  if (!st) throw new Error(`${tarball} missing: apt-get install ${path.basename(tarball, ".tar.xz")}`);
  return `${path.basename(tarball)}:${st.size}:${st.mtimeMs}`;
}

export function fixtureKey(variant: FixtureVariant = "thin"): string {
  const h = createHash("sha256");
  h.update(kernelIdentity(tarballOf(variant))).update("\0").update(CONFIG_FRAGMENT.join(" ")).update("\0").update(clangVersion());
  h.update("\0").update(JSON.stringify(REPRODUCIBLE_ENV)).update("\0v1");
  // The thin key is as it always was (existing caches stay valid).
  if (variant === "dist") h.update("\0dist\0").update(fs.readFileSync(DIST_PATCH));
  if (variant === "dev") h.update("\0dev\0").update(DEV_CONFIG_FRAGMENT.join(" ")).update(JSON.stringify(DEV_ENV)).update("\0kvm_guest.config\0all");
  if (variant === "dev-nolto") h.update("\0dev-nolto\0").update(DEV_NOLTO_FRAGMENT.join(" ")).update(JSON.stringify(DEV_ENV)).update("\0kvm_guest.config\0all");
  if (variant === "thin61") h.update("\0thin61\0").update(THIN61_FRAGMENT.join(" "));
  if (variant === "defconfig") h.update("\0defconfig\0").update(DEFCONFIG_FRAGMENT.join(" ")).update(JSON.stringify(DEV_ENV)).update("\0all");
  if (variant === "defconfig-nolto") h.update("\0defconfig-nolto\0").update(DEFCONFIG_NOLTO_FRAGMENT.join(" ")).update(JSON.stringify(DEV_ENV)).update("\0all");
  return h.digest("hex").slice(0, 16);
}

/** The environment of every make and ktld run on a fixture of `variant`. */
export function fixtureEnv(variant: FixtureVariant = "thin"): NodeJS.ProcessEnv {
  return { ...process.env, ...REPRODUCIBLE_ENV, ...(outOfTree(variant) ? DEV_ENV : {}) };
}

function run(cmd: string, args: readonly string[], cwd: string, variant: FixtureVariant = "thin"): void {
  // Bounded: a hung kernel build fails the fixture (and a test waiting for it) with its command.
  // defconfig is built by hand for a measurement, for hours on 2 cores.
  const timeout = (variant.startsWith("defconfig") ? 8 * 60 : 90) * 60_000;
  execFileSync(cmd, args, { cwd, stdio: ["ignore", "inherit", "inherit"], env: fixtureEnv(variant), timeout, killSignal: "SIGKILL" });
}

/** The kernel's sources as the tarball has them, extracted once per cache (xz takes about
 * 40 s a time on one core; each fixture variant starts from a copy). */
function pristineSources(root: string, log: (s: string) => void, tarball = KERNEL_TARBALL): string {
  const dir = path.join(root, `sources-${createHash("sha256").update(kernelIdentity(tarball)).digest("hex").slice(0, 16)}`);
  const tree = path.join(dir, "linux");
  if (fs.existsSync(path.join(dir, "READY"))) return tree;
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  log(`ktld fixture: extracting ${tarball} into ${dir}`);
  run("tar", ["-xf", tarball, "-C", dir], dir);
  const [top] = fs.readdirSync(dir);
  fs.renameSync(path.join(dir, top), tree);
  fs.writeFileSync(path.join(dir, "READY"), `${new Date().toISOString()}\n`);
  return tree;
}

/** The cached, built fixture tree; builds it (minutes) on first use. */
export function ensureFixture(variant: FixtureVariant = "thin", log: (s: string) => void = (s) => process.stderr.write(s + "\n")): string {
  const root = fixtureCacheRoot();
  const final = path.join(root, fixtureKey(variant));
  const tree = path.join(final, "linux");
  if (fs.existsSync(path.join(final, "READY"))) return tree;

  fs.mkdirSync(root, { recursive: true });
  // Built where it stays (READY, written last, says it is whole): the kernel's tools (objtool,
  // resolve_btfids) record absolute paths, and in a copy they must still name files that
  // exist and are older, or make there would rebuild them.
  fs.rmSync(final, { recursive: true, force: true });
  fs.mkdirSync(final, { recursive: true });
  const src = path.join(final, "linux");
  log(`ktld fixture: copying the kernel's sources into ${final}`);
  execFileSync("cp", ["-a", pristineSources(root, log, tarballOf(variant)), src], { timeout: 10 * 60_000, killSignal: "SIGKILL" });
  if (variant === "dist") {
    log(`ktld fixture: applying ${path.basename(DIST_PATCH)}`);
    execFileSync("patch", ["-p1", "-s", "-i", DIST_PATCH], { cwd: src, stdio: ["ignore", "inherit", "inherit"], timeout: 10 * 60_000 });
  }

  const jobs = String(os.cpus().length);
  if (variant === "dev" || variant === "dev-nolto") {
    // Out of tree, into linux/out (srctree becomes ".."): make all, as a developer does.
    const mk = [...MAKE_ARGS, `O=${DEV_BUILD_DIR}`];
    const out = path.join(src, DEV_BUILD_DIR);
    log(`ktld fixture: O=${DEV_BUILD_DIR} tinyconfig + kvm_guest.config + ${variant === "dev" ? "ThinLTO" : "no LTO"}, modules, MODVERSIONS, kallsyms, DWARF5, BTF`);
    run("make", [...mk, "tinyconfig"], src, variant);
    run("make", [...mk, "kvm_guest.config"], src, variant);
    run(path.join(src, "scripts/config"), ["--file", path.join(out, ".config"), ...configFragment(variant).flatMap((o) => o.split(" "))], src, variant);
    run("make", [...mk, "olddefconfig"], src, variant);
    const config = fs.readFileSync(path.join(out, ".config"), "utf8");
    const required = variant === "dev" ? DEV_REQUIRED : [...DEV_REQUIRED.filter((o) => o !== "CONFIG_LTO_CLANG_THIN=y"), "CONFIG_LTO_NONE=y"];
    for (const want of required) if (!config.includes(`\n${want}\n`)) throw new Error(`${variant} fixture config lacks ${want}`);
    log(`ktld fixture: make O=${DEV_BUILD_DIR} -j${jobs} all`);
    run("make", [...mk, `-j${jobs}`, "all"], src, variant);
  } else if (variant === "defconfig" || variant === "defconfig-nolto") {
    const mk = [...MAKE_ARGS, `O=${DEV_BUILD_DIR}`];
    const lto = variant === "defconfig" ? "CONFIG_LTO_CLANG_THIN=y" : "CONFIG_LTO_NONE=y";
    log(`ktld fixture: O=${DEV_BUILD_DIR} x86_64_defconfig${variant === "defconfig" ? " + ThinLTO" : ", no LTO"}`);
    run("make", [...mk, "defconfig"], src, variant);
    run(path.join(src, "scripts/config"), ["--file", path.join(src, DEV_BUILD_DIR, ".config"), ...configFragment(variant).flatMap((o) => o.split(" "))], src, variant);
    run("make", [...mk, "olddefconfig"], src, variant);
    const config = fs.readFileSync(path.join(src, DEV_BUILD_DIR, ".config"), "utf8");
    for (const want of [lto, "CONFIG_MODULES=y"]) if (!config.includes(`\n${want}\n`)) throw new Error(`${variant} fixture config lacks ${want}`);
    log(`ktld fixture: make O=${DEV_BUILD_DIR} -j${jobs} all (hours on 2 cores)`);
    const t0 = Date.now();
    run("make", [...mk, `-j${jobs}`, "all"], src, variant);
    fs.writeFileSync(path.join(final, "BUILD-TIME"), `make -j${jobs} all: ${((Date.now() - t0) / 1000).toFixed(0)} s wall\n`);
  } else {
    const lto = variant === "dist" ? "CONFIG_LTO_CLANG_THIN_DIST" : "CONFIG_LTO_CLANG_THIN";
    log(`ktld fixture: ${variant === "thin61" ? "Linux 6.1, " : ""}tinyconfig + ${lto}`);
    run("make", [...MAKE_ARGS, "tinyconfig"], src);
    const cfgArgs = configFragment(variant).flatMap((s) => s.split(" "));
    run(path.join(src, "scripts/config"), ["--file", ".config", ...cfgArgs], src);
    run("make", [...MAKE_ARGS, "olddefconfig"], src);
    const config = fs.readFileSync(path.join(src, ".config"), "utf8");
    for (const want of [`${lto}=y`, "CONFIG_IKCONFIG=y", "CONFIG_PVH=y", "CONFIG_SERIAL_8250_CONSOLE=y", ...(variant === "thin61" ? ["CONFIG_BLK_DEV_INITRD=y", "CONFIG_DEVTMPFS=y", "CONFIG_MODULES=y", "CONFIG_XZ_DEC=m", "CONFIG_CRC_CCITT=m"] : [])]) {
      if (!config.includes(`\n${want}\n`)) throw new Error(`fixture config lacks ${want}`);
    }
    const targets = variant === "thin61" ? ["vmlinux", "modules"] : ["vmlinux"];
    log(`ktld fixture: make ${targets.join(" ")} -j${jobs} (about 4-5 minutes on 2 cores)`);
    run("make", [...MAKE_ARGS, `-j${jobs}`, ...targets], src);
  }
  fs.writeFileSync(path.join(final, "READY"), `${new Date().toISOString()}\n`);
  return tree;
}

/** kbuild's own records are relative (in an O= dir srctree is ".."), but the kernel's host
 * tools (objtool, resolve_btfids; tools/build, not kbuild) record their command lines with
 * absolute paths: in a copy, make would see other commands and rebuild them (and relink
 * vmlinux.o after them). A copy's tool records are moved to the copy's path, mtimes kept,
 * as if the tree had been built there. */
function relocateToolRecords(dir: string, from: string, to: string): void {
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) relocateToolRecords(p, from, to);
    else if (e.isFile() && (/^\..*\.cmd$/.test(e.name) || e.name.endsWith(".d"))) {
      const text = fs.readFileSync(p, "utf8");
      if (!text.includes(from)) continue;
      const st = fs.statSync(p);
      fs.writeFileSync(p, text.split(from).join(to));
      fs.utimesSync(p, st.atime, st.mtime);
    }
  }
}

/** A private copy of the fixture tree (or of `tree`, a copy of it made elsewhere) for one
 * test (mtimes kept, so make sees it as built). Returns the build dir: `dest` itself, or `dest/out` for the developer fixture. */
export function copyFixture(dest: string, variant: FixtureVariant = "thin", tree: string = ensureFixture(variant)): string {
  fs.mkdirSync(path.dirname(dest), { recursive: true });
  execFileSync("cp", ["-a", tree, dest], { timeout: 10 * 60_000, killSignal: "SIGKILL" });
  return madeHere(dest, variant, tree);
}

/** The fixture tree (or `tree`) seen at `dest` through an overlay mount, its upper and work
 * dirs beside `dest`: made at once, and only what a test changes is written (a copy of the
 * developer fixture writes 2-3 GB; a test run makes a dozen). The fixture under it must not
 * change while it is mounted; `releaseFixture` unmounts it. Undefined where the mount is not
 * possible (not root, no overlayfs, `KTLD_FIXTURE_COPY=cp`): then `copyFixture`. */
export function overlayFixture(dest: string, variant: FixtureVariant = "thin", tree: string = ensureFixture(variant)): string | undefined {
  if (process.getuid?.() !== 0 || process.env.KTLD_FIXTURE_COPY === "cp" || /[,:]/.test(tree + dest)) return undefined;
  const [upper, work] = [`${dest}.upper`, `${dest}.work`];
  for (const d of [dest, upper, work]) fs.mkdirSync(d, { recursive: true });
  const r = spawnSync("mount", ["-t", "overlay", "overlay", "-o", `lowerdir=${tree},upperdir=${upper},workdir=${work}`, dest], { stdio: "ignore", timeout: 60_000, killSignal: "SIGKILL" });
  if (r.status !== 0) {
    for (const d of [dest, upper, work]) fs.rmSync(d, { recursive: true, force: true });
    return undefined;
  }
  return madeHere(dest, variant, tree);
}

/** Removes a fixture tree made by `copyFixture` or `overlayFixture` (unmounted first: removing
 * a mounted view would write whiteouts through it, then fail on the mount point). */
export function releaseFixture(dest: string): void {
  const mounted = fs.readFileSync("/proc/self/mountinfo", "utf8").split("\n").some((l) => l.split(" ")[4] === dest);
  if (mounted) spawnSync("umount", ["-l", dest], { stdio: "ignore", timeout: 60_000, killSignal: "SIGKILL" });
  for (const d of [dest, `${dest}.upper`, `${dest}.work`]) fs.rmSync(d, { recursive: true, force: true });
}

/** A fixture tree just copied or mounted at `dest`, made right for where it is now. */
function madeHere(dest: string, variant: FixtureVariant, tree: string): string {
  if (!outOfTree(variant)) {
    relocateToolRecords(path.join(dest, "tools"), tree, dest);
    return dest;
  }
  relocateToolRecords(path.join(dest, DEV_BUILD_DIR, "tools"), tree, dest);
  // The one file of an O= dir that names the source tree by its absolute path: the Makefile
  // kbuild wrote there. Written again for this copy, by kbuild itself.
  execFileSync("make", [...MAKE_ARGS, `O=${DEV_BUILD_DIR}`, "-s", "outputmakefile"], { cwd: dest, env: fixtureEnv(variant), stdio: "ignore", timeout: 5 * 60_000, killSignal: "SIGKILL" });
  return path.join(dest, DEV_BUILD_DIR);
}

if (require.main === module) {
  const named = (["thin", "dist", "dev", "dev-nolto", "defconfig", "defconfig-nolto", "thin61"] as const).filter((v) => process.argv.includes(`--${v}`));
  const variants: FixtureVariant[] = process.argv.includes("--all") ? ["thin", "dist", "dev", "thin61"] : named.length ? [...named] : ["thin"];
  for (const v of variants) {
    const t0 = Date.now();
    const tree = ensureFixture(v);
    process.stdout.write(`${tree}\n`);
    process.stderr.write(`ktld fixture (${v}) ready in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  }
}
