// Client commands that talk to a running daemon: status, why, log.
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "../src/base/errors";
import { IpcClient } from "../src/ipc";
import { whyText } from "../src/why";
import { statusText } from "./views";

export async function clientCommand(c: IpcClient, pos: readonly string[], json: boolean, follow: boolean): Promise<number> {
  const out = (s: string) => process.stdout.write(s.endsWith("\n") ? s : `${s}\n`);
  if (pos[0] === "status") {
    if (!json && process.stdout.isTTY && process.env.TERM !== "dumb") return (await import("./tui")).runTui(c);
    const r = await c.request("status");
    if (!r.ok) return fail(r.error);
    out(json ? JSON.stringify(r.result) : statusText(r.result, process.stdout.columns ?? 1000));
    return EXIT_OK;
  }
  if (pos[0] === "why") {
    if (pos.length !== 2) {
      process.stderr.write("usage: ktld why OBJECT (e.g. kernel/fork.o)\n");
      return EXIT_USAGE;
    }
    const r = await c.request("why", { object: pos[1] });
    if (!r.ok) return fail(r.error);
    out(json ? JSON.stringify(r.result) : whyText(r.result).join("\n"));
    return EXIT_OK;
  }
  // log
  const r = await c.request("log", { lines: 200 });
  if (!r.ok) return fail(r.error);
  for (const line of r.result as string[]) out(line);
  if (!follow) return EXIT_OK;
  c.onEvent((e) => {
    if (e.kind === "log") out(e.line);
  });
  await c.request("subscribe");
  await new Promise<void>((resolve) => c.onClose(resolve));
  return EXIT_OK;
}

function fail(error?: string): number {
  process.stderr.write(`ktld: ${error ?? "the daemon failed to answer"}\n`);
  return EXIT_FAILED;
}
