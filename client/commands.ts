// Client commands that talk to a running daemon: status, why, log.
import { EXIT_FAILED, EXIT_OK, EXIT_USAGE } from "../src/errors";
import { IpcClient } from "../src/ipc";
import { statusText } from "./views";

export async function clientCommand(c: IpcClient, pos: readonly string[], json: boolean, follow: boolean): Promise<number> {
  const out = (s: string) => process.stdout.write(s.endsWith("\n") ? s : `${s}\n`);
  if (pos[0] === "status") {
    if (!json && process.stdout.isTTY && process.env.TERM !== "dumb") return (await import("./tui")).runTui(c);
    const r = await c.request("status");
    if (!r.ok) return fail(r.error);
    out(json ? JSON.stringify(r.result) : statusText(r.result as Parameters<typeof statusText>[0], process.stdout.columns ?? 1000));
    return EXIT_OK;
  }
  if (pos[0] === "why") {
    if (pos.length !== 2) {
      process.stderr.write("usage: ktld why OBJECT (e.g. kernel/fork.o)\n");
      return EXIT_USAGE;
    }
    const r = await c.request("why", { object: pos[1] });
    if (!r.ok) return fail(r.error);
    const w = r.result as {
      object: string; build: number | null; trigger?: string[]; frontend?: { reason: string; changed: boolean } | null; backend?: { action: string; reason: string } | null; reason?: string; wrapper?: string;
      thinlink?: { skipped: boolean; reason?: string; indexChanged?: number }; link?: { reason?: string }; kept?: { build: number; reason: string };
    };
    const keptLine = w.kept ? `  kept since: build #${w.kept.build} did not relink it (${w.kept.reason})` : undefined;
    if (json) out(JSON.stringify(w));
    else if (w.build === null) out([`${w.object}: ${w.reason}`, ...(keptLine ? [keptLine] : [])].join("\n"));
    else if (w.link) {
      const tl = w.thinlink;
      out([
        `${w.object}: relinked by build #${w.build} (triggered by ${(w.trigger ?? []).join(", ") || "?"})`,
        `  thin-link: ${tl?.skipped ? "kept" : "ran"}${tl?.reason ? `: ${tl.reason}` : ""}${tl?.indexChanged !== undefined ? ` (${tl.indexChanged} index files changed)` : ""}`,
        `  link: ran${w.link.reason ? `: ${w.link.reason}` : ""}`,
        ...(keptLine ? [keptLine] : []),
      ].join("\n"));
    } else {
      const lines = [`${w.object}: rebuilt by build #${w.build} (triggered by ${(w.trigger ?? []).join(", ") || "?"})`];
      if (w.frontend) lines.push(`  FE: ${w.frontend.reason}${w.frontend.changed ? "" : " (bitcode unchanged: stopped there)"}`);
      if (w.backend) lines.push(`  BE: ${w.backend.action === "restore" ? "restored" : "compiled"}: ${w.backend.reason}`);
      out(lines.join("\n"));
    }
    if (!json && w.wrapper) out(`  compiler wrapper: ${w.wrapper}`);
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
