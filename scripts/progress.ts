// A long command's output as progress: every line into a log file, and on a terminal one
// updating line (`[n/N] LTO kernel/fork.o`, as ninja does); on anything else a plain line
// now and then. The log file is named at the end.
import { spawn } from "node:child_process";
import * as fs from "node:fs";

/** `[k/N]` at the end of a kbuild-style line (ktld's `  LTO     kernel/fork.o [3/12]`). */
export function progressOf(line: string): { done: number; total: number } | undefined {
  const m = /\[(\d+)\/(\d+)\]\s*$/.exec(line);
  return m ? { done: Number(m[1]), total: Number(m[2]) } : undefined;
}

/** What the updating line says after `line`, the `n`th kbuild step line seen. */
export function statusLine(title: string, n: number, line: string, width: number): string {
  const p = progressOf(line);
  const count = p ? `[${p.done}/${p.total}]` : `[${n}]`;
  const text = `${title} ${count} ${line.trim().replace(/\s+\[\d+\/\d+\]$/, "").replace(/\s+/g, " ")}`;
  return text.length <= width ? text : `${text.slice(0, Math.max(0, width - 1))}…`;
}

const STEP = /^\s{2}[A-Z][A-Z0-9_]*( \[M\])?\s+\S/;

/** Runs `cmd`, its output going to `logFile` and shown as progress; resolves its exit status. */
export function runWithProgress(title: string, cmd: string, args: readonly string[], opts: {
  env?: NodeJS.ProcessEnv; cwd?: string; logFile: string; timeoutMs: number;
  /** From the line that matches on, the output is shown as it is (a summary at the end). */
  echoFrom?: RegExp;
}): Promise<number> {
  const tty = process.stdout.isTTY === true && process.env.TERM !== "dumb";
  const log = fs.openSync(opts.logFile, "a");
  fs.writeSync(log, `\n$ ${[cmd, ...args].join(" ")}\n`);
  const t0 = Date.now();
  let steps = 0;
  let last = "";
  let shown = 0;
  let nextPlain = 0;
  const show = (force = false) => {
    if (!tty || !last) return;
    const now = Date.now();
    if (!force && now - shown < 100) return;
    shown = now;
    process.stdout.write(`\r\x1b[K${statusLine(title, steps, last, (process.stdout.columns ?? 100) - 1)}`);
  };
  const tail: string[] = [];
  let echo = false;
  const onLine = (line: string) => {
    fs.writeSync(log, `${line}\n`);
    if (echo || opts.echoFrom?.test(line)) {
      if (!echo && tty) process.stdout.write("\r\x1b[K");
      echo = true;
      process.stdout.write(`${line}\n`);
      return;
    }
    tail.push(line);
    if (tail.length > 20) tail.shift();
    if (!STEP.test(line)) return;
    steps++;
    last = line;
    if (tty) return show();
    // Not a terminal: a line at each tenth of a known total, else every 500 steps.
    const p = progressOf(line);
    const due = p ? p.done >= nextPlain : steps % 500 === 0;
    if (due) {
      process.stdout.write(`${statusLine(title, steps, line, 200)}\n`);
      if (p) nextPlain = p.done + Math.max(1, Math.ceil(p.total / 10));
    }
  };
  process.stdout.write(tty ? `${title} …` : `${title}: started (output in ${opts.logFile})\n`);
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { cwd: opts.cwd, env: opts.env, stdio: ["ignore", "pipe", "pipe"] });
    const timer = setTimeout(() => child.kill("SIGKILL"), opts.timeoutMs);
    for (const stream of [child.stdout, child.stderr]) {
      let rest = "";
      stream.setEncoding("utf8");
      stream.on("data", (chunk: string) => {
        const lines = (rest + chunk).split("\n");
        rest = lines.pop() ?? "";
        for (const l of lines) onLine(l);
      });
      stream.on("end", () => rest && onLine(rest));
    }
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      if (!echo) show(true);
      fs.closeSync(log);
      const secs = ((Date.now() - t0) / 1000).toFixed(1);
      const verdict = code === 0 ? `done in ${secs} s (${steps} steps)` : `FAILED (${signal ?? `exit ${code}`}) after ${secs} s`;
      process.stdout.write(`${tty ? "\r\x1b[K" : ""}${title}: ${verdict}; full output in ${opts.logFile}\n`);
      // A failure shows how it ended.
      if (code !== 0) process.stdout.write(`${tail.join("\n")}\n`);
      resolve(code ?? 1);
    });
  });
}
