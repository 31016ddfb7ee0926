// FE replays through distcc (src/distcc.ts) on a real distccd the test starts on 127.0.0.1:
// an edit's compiles go out (distccd's own log names each) and none falls back. A remote
// compile's bitcode is not the local one's bytes: inline asm's `!srcloc` locations are offsets
// into what clang read (the preprocessed text there, the sources here). The test proves that
// this metadata is all that differs from kbuild's compile run here, and that vmlinux is what
// kbuild's own link makes of the natives. Then distccd is killed: the next edit's compiles
// run here, each counted and named as a fallback, their bitcode kbuild's bytes.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as net from "node:net";
import * as path from "node:path";
import { after, describe, test } from "node:test";
import { fixtureEnv, MAKE_ARGS } from "../scripts/fixture";
import { hashFile } from "../src/base/hash";
import { buildWait, daemonStatus, execBounded, fixtureCopy, freePort, ktld, processesWith, spawnBounded, startServer } from "./helpers";
import { assertKbuildLink, recordedCommand } from "./reference";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** An inline asm's `!srcloc` node: source offsets, as llvm-dis prints them. */
const SRCLOC = /^!\d+ = !\{i64 \d+(, i64 \d+)*\}$/;
const EDITS: readonly [string, string][] = [
  ["kernel/fork.c", "void free_task(struct task_struct *tsk)\n{\n"],
  ["kernel/sys.c", "SYSCALL_DEFINE0(getpid)\n{\n"],
];

interface Build {
  id: number;
  ok: boolean;
  error?: string;
  frontend: { compiled: number; remote?: number; fallbacks?: { object: string; why: string }[] };
}
interface Status {
  distcc: { hosts: string; slots: number; remote: number; fallbacks: number; lastFallback?: string } | null;
  history: { id: number; frontendJobs?: { object: string }[] }[];
}

/** The bytes kbuild's recorded compile of `object` writes when run here, without distcc. */
function localCompile(tree: string, object: string): string {
  const out = path.join(path.dirname(tree), `local-${path.basename(object)}`);
  const command = recordedCommand(tree, object)
    .replace(/-Wp,-MMD,\S+/, `-Wp,-MMD,${out}.d`)
    .replace(` -o ${object} `, ` -o ${out} `);
  assert.notEqual(command.indexOf(out), -1, "the recorded command's output could not be moved aside");
  const r = spawnBounded("/bin/sh", ["-c", command], { cwd: tree, timeout: 5 * 60_000 });
  assert.equal(r.status, 0, r.stderr.slice(-2000));
  return hashFile(out)!;
}

function waitPort(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

describe("FE replays through distcc (distccd on 127.0.0.1)", { timeout: 40 * 60_000 }, () => {
  const tree = fixtureCopy("distcc");
  const logDir = path.join(path.dirname(tree), "distccd");
  const log = path.join(logDir, "distccd.log");
  let port = 0;
  let server: ReturnType<typeof startServer> | undefined;
  let env: NodeJS.ProcessEnv = fixtureEnv();
  const originals = new Map(EDITS.map(([f]) => [f, fs.readFileSync(path.join(tree, f), "utf8")]));
  after(() => {
    ktld(["stop", "--build-dir", tree], env);
    server?.kill();
  });

  const edit = (round: number) => {
    for (const [file, anchor] of EDITS) {
      const text = originals.get(file)!;
      assert.ok(text.includes(anchor), `${file} has no ${JSON.stringify(anchor)}`);
      fs.writeFileSync(path.join(tree, file), text.replace(anchor, `${anchor}\tpr_info("ktld distcc ${round}\\n");\n`));
    }
  };
  const compiledOk = () => (fs.existsSync(log) ? fs.readFileSync(log, "utf8") : "").split("\n").filter((l) => /COMPILE_OK/.test(l));

  /** ktld's bitcode of each edited unit equals kbuild's compile here. */
  const checkAgainstKbuild = () => {
    for (const [file] of EDITS) {
      const object = file.replace(/\.c$/, ".o");
      assert.equal(hashFile(path.join(tree, object)), localCompile(tree, object), `${object}: the bitcode is not what kbuild's compile makes here`);
    }
  };
  const localCopy = (object: string) => path.join(path.dirname(tree), `local-${path.basename(object)}`);
  const checkVmlinux = () => assertKbuildLink(tree, env, MAKE_ARGS);

  test("an edit's FE compiles go out through distccd, none falls back; bitcode kbuild's but for asm locations, vmlinux kbuild's link of the natives", async () => {
    // Settle the copy: what make finds to do after a copy (its tool records are moved to the
    // copy, scripts/fixture.ts, so objtool is not rebuilt and vmlinux.o not relinked).
    const settle = spawnBounded("make", [...MAKE_ARGS, "-s", "vmlinux"], { cwd: tree, env, timeout: 20 * 60_000 });
    assert.equal(settle.status, 0, settle.stderr.slice(-3000));
    port = await freePort();
    // distccd started as root drops to its own user, which writes the log: it must get there.
    fs.chmodSync(path.dirname(tree), 0o711);
    fs.mkdirSync(logDir, { recursive: true });
    fs.chmodSync(logDir, 0o777);
    server = startServer("distccd", ["--no-detach", "--daemon", "--listen", "127.0.0.1", "--port", String(port), "--allow", "127.0.0.1",
      "--log-file", log, "--log-level", "info", "--jobs", "2"], 40 * 60_000,
    // Its temp files too: a TMPDIR of the caller's that only root may write (a test run with
    // TMPDIR moved) made every compile fail to distribute.
    { env: { ...process.env, TMPDIR: logDir } });
    let up = false;
    for (let i = 0; i < 100 && !up; i++) {
      up = await waitPort(port);
      if (!up) await sleep(100);
    }
    assert.ok(up, "distccd did not listen");
    env = { ...fixtureEnv(), DISTCC_HOSTS: `127.0.0.1:${port}/2` };

    const r = ktld(["start", "--build-dir", tree, "--idle-timeout", "3600", "-j2", "--distcc"], env);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(buildWait(tree, env).ok, true);
    const before = compiledOk().length;
    edit(1);
    const b = buildWait<Build>(tree, env);
    assert.equal(b.ok, true, b.error);
    assert.equal(b.frontend.compiled, EDITS.length);
    assert.equal(b.frontend.remote, EDITS.length, `compiles not done remotely: ${JSON.stringify(b.frontend)}`);
    assert.deepEqual(b.frontend.fallbacks, []);
    // distccd's own record: one successful compile for each edited source, after the edit.
    const lines = compiledOk().slice(before);
    for (const [file] of EDITS) assert.ok(lines.some((l) => l.endsWith(` ${file}`)), `distccd's log has no compile of ${file}:\n${lines.join("\n")}`);
    const st = daemonStatus<Status>(tree, env);
    assert.equal(st.distcc?.hosts, `127.0.0.1:${port}/2`);
    assert.equal(st.distcc?.fallbacks, 0);
    assert.ok((st.distcc?.remote ?? 0) >= EDITS.length);
    const text = ktld(["status", "--build-dir", tree], env);
    assert.match(text.stdout, /distcc 127\.0\.0\.1:\d+\/2 \(2 slots, --distcc\): \d+ FE compiles remote/);
    ktld(["stop", "--build-dir", tree], env);
    // The remote bitcode against kbuild's compile here: only inline asm's source locations differ.
    for (const [file] of EDITS) {
      const object = file.replace(/\.c$/, ".o");
      localCompile(tree, object);
      // The file's name and the summary's module entry (its path, and the hash of the bytes
      // that differ) are left out.
      const dis = (f: string) => execBounded("llvm-dis-19", [f, "-o", "-"]).split("\n").filter((l) => !l.startsWith("; ModuleID") && !/^\^0 = module: \(path: /.test(l));
      const [a, b] = [dis(path.join(tree, object)), dis(localCopy(object))];
      assert.equal(a.length, b.length, `${object}: the remote and the local bitcode differ in length`);
      const differ = a.map((l, k) => [l, b[k]] as const).filter(([x, y]) => x !== y);
      const other = differ.filter(([x, y]) => !(SRCLOC.test(x) && SRCLOC.test(y) && x.split(" = ")[0] === y.split(" = ")[0]));
      assert.deepEqual(other, [], `${object}: the remote bitcode differs from kbuild's compile here in more than !srcloc metadata`);
    }
    await checkVmlinux();
  });

  test("distccd gone: each compile runs here, counted and named as a fallback, and the result is as right", async () => {
    server?.kill();
    assert.notEqual(await server?.exited, 0);
    // Its workers die with it (one process group, one SIGKILL), but not in the same instant:
    // a worker's listening socket can outlive the parent's exit by a moment on a loaded machine.
    const portArg = String(port);
    let answers = true;
    for (let i = 0; i < 100 && (answers || processesWith("distccd", portArg).length > 0); i++) {
      await sleep(100);
      answers = await waitPort(port);
    }
    assert.deepEqual(processesWith("distccd", portArg), [], "a distccd worker outlived the kill");
    assert.equal(answers, false, "distccd still answers: nothing to prove");
    const before = compiledOk().length;
    const r = ktld(["start", "--build-dir", tree, "--idle-timeout", "3600", "-j2", "--distcc"], env);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(buildWait(tree, env).ok, true);
    edit(2);
    const b = buildWait<Build>(tree, env);
    assert.equal(b.ok, true, b.error);
    assert.equal(b.frontend.remote, 0);
    assert.deepEqual((b.frontend.fallbacks ?? []).map((f) => f.object).sort(), EDITS.map(([f]) => f.replace(/\.c$/, ".o")).sort());
    for (const f of b.frontend.fallbacks ?? []) assert.match(f.why, /^distcc exit 1\d\d: /);
    assert.equal(compiledOk().length, before, "distccd compiled something after it was killed");
    const st = daemonStatus<Status>(tree, env);
    assert.equal(st.distcc?.fallbacks, EDITS.length);
    assert.match(ktld(["status", "--build-dir", tree], env).stdout, /compiled here after distcc failed/);
    checkAgainstKbuild();
    ktld(["stop", "--build-dir", tree], env);
    await checkVmlinux();
    for (const [file, text] of originals) fs.writeFileSync(path.join(tree, file), text);
  });

  test("--distcc without DISTCC_HOSTS is refused with one line that names the fix", () => {
    const { DISTCC_HOSTS: _, ...bare } = env;
    const r = ktld(["start", "--build-dir", tree, "--distcc"], bare);
    assert.equal(r.status, 2, r.stdout + r.stderr);
    assert.match(r.stderr, /--distcc needs DISTCC_HOSTS/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
  });
});
