// POSIX shell words, as kbuild writes them into .cmd files. Kernel commands carry
// defines such as -DKBUILD_MODNAME='"fork"', so quoting must be parsed, not split on spaces.

export type ShellToken = { kind: "word"; value: string } | { kind: "op"; value: string };

const OPERATORS = ["&&", "||", ";", "|", ">>", ">", "<", "&"];

export class ShellSyntaxError extends Error {}

/** Splits a command line into words and control/redirection operators. Expansions
 * (`$x`, `$(...)`, backquotes) are kept verbatim in the word: callers that meet them
 * must hand the command to a real shell. */
export function tokenize(line: string): ShellToken[] {
  const out: ShellToken[] = [];
  let i = 0;
  let word: string | null = null;
  const flush = () => {
    if (word !== null) out.push({ kind: "word", value: word });
    word = null;
  };
  while (i < line.length) {
    const c = line[i];
    if (c === " " || c === "\t" || c === "\n") {
      flush();
      i++;
      continue;
    }
    const op = OPERATORS.find((o) => line.startsWith(o, i));
    if (op) {
      flush();
      out.push({ kind: "op", value: op });
      i += op.length;
      continue;
    }
    if (c === "'") {
      const end = line.indexOf("'", i + 1);
      if (end < 0) throw new ShellSyntaxError(`unterminated ' in: ${line.slice(i, i + 40)}`);
      word = (word ?? "") + line.slice(i + 1, end);
      i = end + 1;
      continue;
    }
    if (c === '"') {
      let j = i + 1;
      let s = "";
      while (j < line.length && line[j] !== '"') {
        if (line[j] === "\\" && j + 1 < line.length && '$`"\\\n'.includes(line[j + 1])) {
          s += line[j + 1];
          j += 2;
        } else {
          s += line[j++];
        }
      }
      if (j >= line.length) throw new ShellSyntaxError(`unterminated " in: ${line.slice(i, i + 40)}`);
      word = (word ?? "") + s;
      i = j + 1;
      continue;
    }
    if (c === "\\" && i + 1 < line.length) {
      word = (word ?? "") + line[i + 1];
      i += 2;
      continue;
    }
    word = (word ?? "") + c;
    i++;
  }
  flush();
  return out;
}

/** The simple commands of a line, split at `;`, `&&` and `||`. */
export function splitCommands(line: string): ShellToken[][] {
  const cmds: ShellToken[][] = [[]];
  for (const t of tokenize(line)) {
    if (t.kind === "op" && (t.value === ";" || t.value === "&&" || t.value === "||")) cmds.push([]);
    else cmds[cmds.length - 1].push(t);
  }
  return cmds.filter((c) => c.length > 0);
}

/** argv of a simple command; throws if it has redirections or pipes. */
export function argvOf(tokens: readonly ShellToken[]): string[] {
  return tokens.map((t) => {
    if (t.kind !== "word") throw new ShellSyntaxError(`unexpected '${t.value}' in a simple command`);
    return t.value;
  });
}

const SAFE = /^[A-Za-z0-9_@%+=:,./-]+$/;

export function quote(word: string): string {
  if (word !== "" && SAFE.test(word)) return word;
  return `'${word.replace(/'/g, `'\\''`)}'`;
}

export function quoteArgv(argv: readonly string[]): string {
  return argv.map(quote).join(" ");
}
