// View models: pure functions from the daemon's state to text. The TUI shows what these
// return; the tests snapshot them at several terminal sizes.
import type { BootJson, DaemonEvent, HistoryJson, HistoryReportJson, KernelModuleJson, StatusResult } from "../src/protocol";

// The daemon's own result types (src/protocol.ts), under the names the views use.
export type ReportView = HistoryReportJson;
export type KernelModuleView = KernelModuleJson;
export type BootView = BootJson;
export type HistoryView = HistoryJson;
export type StatusView = StatusResult;

/** A once-per-target step's decision (src/steps.ts), when the report carries it. */
function stepLine(indent: string, r: { thinlink: { reason?: string }; link: { reason?: string } }): string[] {
  const parts = [r.thinlink.reason && `thin-link: ${r.thinlink.reason}`, r.link.reason && `link: ${r.link.reason}`].filter(Boolean);
  return parts.length ? [`${indent}${parts.join("; ")}`] : [];
}

/** What the TUI knows of the build in progress, from the event stream. */
export interface LiveBuild {
  id: number;
  phase: string;
  total: number;
  done: number;
  running: Map<string, { phase: string; since: number; reason: string }>;
  /** When each phase of this build began, in order (from the event stream). */
  phases?: { phase: string; at: number }[];
  /** The link's steps so far: when each began, and its time once it ended. */
  linkSteps?: { step: string; at: number; ms?: number }[];
}

/** The link's steps: done ones with their time, running ones with their time so far, and
 * the ones the last link ran that have not started, with what they took then (a hint). */
export function linkStepsLine(live: LiveBuild, last: HistoryView | undefined, width: number, now: number): string | undefined {
  const seen = live.linkSteps ?? [];
  const before = last?.report.link.steps ?? [];
  if (!seen.length && !before.length) return undefined;
  const started = new Set(seen.map((s) => s.step));
  const parts = [
    ...seen.map((s) => (s.ms !== undefined ? `${s.step} ${secs(s.ms)}` : `${s.step} ${secs(now - s.at)}…`)),
    ...before.filter((s) => !started.has(s.name)).map((s) => `${s.name} (last ${secs(s.ms)})`),
  ];
  return clip(`  link: ${parts.join(" > ")}`, width);
}

const TIMELINE = ["FE", "thin-link", "BE", "link"] as const;

/** The current build's phases in order: done ones with their time, the running one with
 * its time so far, the ones to come with what they took in the last build (a hint). */
export function timelineLine(live: LiveBuild, last: HistoryView | undefined, width: number, now: number): string {
  const lastMs: Record<string, number | undefined> = last ? {
    FE: last.report.frontend.ms, "thin-link": last.report.thinlink.ms, BE: last.report.backend.ms,
    link: last.report.link.skipped ? undefined : last.report.link.ms, boot: last.boot?.ms,
    modules: last.report.kernelModules?.length ? last.report.kernelModules.reduce((n, m) => n + m.thinlink.ms + m.backend.ms + m.link.ms, 0) : undefined,
  } : {};
  const seen = live.phases ?? [];
  const modules = last?.report.kernelModules?.length || seen.some((s) => s.phase === "modules");
  const parts = [...TIMELINE, ...(modules ? ["modules"] : []), ...(last?.boot ? ["boot"] : [])].map((p) => {
    const i = seen.findIndex((s) => s.phase === p);
    if (i < 0) return lastMs[p] !== undefined ? `${p} (last ${secs(lastMs[p]!)})` : p;
    const end = i + 1 < seen.length ? seen[i + 1].at : now;
    return `${p} ${secs(end - seen[i].at)}${i + 1 < seen.length ? " done" : "…"}`;
  });
  return clip(`  ${parts.join(" > ")}`, width);
}

export function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

export function clip(s: string, width: number): string {
  if (width <= 0) return "";
  return s.length <= width ? s : `${s.slice(0, Math.max(0, width - 1))}…`;
}

const secs = (ms: number) => `${(ms / 1000).toFixed(1)}s`;

export function headerLines(st: StatusView, width: number): string[] {
  let state = st.state;
  if (st.stale) state += " (vmlinux stale: last build failed)";
  return [
    `ktld  ${st.buildDir}`,
    `${st.config.arch ?? "?"}${st.config.distMode ? " dist-mode" : ""}  ${st.units ?? st.modules} bitcode units${st.kernelModules?.built ? `, ${st.kernelModules.built} kernel modules` : ""}  ${st.clang}`,
    `daemon pid ${st.pid}, up ${duration(st.uptimeMs)}  state: ${state}`,
    ...(st.degraded ? [`watching degraded: ${st.degraded}`] : []),
    ...(st.kernelModules?.leftToKbuild ?? []).map((l) => `! ${l}`),
    ...(st.notHandled ?? []).map((l) => `! ${l}`),
  ].map((l) => clip(l, width));
}

/** Mean duration of a job of `phase` over past builds, for the ETA. */
export function meanJobMs(history: readonly HistoryView[], phase: "FE" | "BE"): number | undefined {
  const ms: number[] = [];
  for (const h of history) {
    if (phase === "BE") for (const j of h.report.backend.jobs ?? []) if (j.ms !== undefined && j.action === "compile") ms.push(j.ms);
    if (phase === "FE" && h.report.frontend.compiled) ms.push(h.report.frontend.ms / h.report.frontend.compiled);
  }
  return ms.length ? ms.reduce((a, b) => a + b, 0) / ms.length : undefined;
}

export function progressBar(done: number, total: number, width: number): string {
  const inner = Math.max(0, width - 2);
  const filled = total > 0 ? Math.round((inner * Math.min(done, total)) / total) : 0;
  return `[${"#".repeat(filled)}${"-".repeat(inner - filled)}]`;
}

export function currentLines(live: LiveBuild | undefined, history: readonly HistoryView[], width: number, jobs: number, now = Date.now()): string[] {
  if (!live) return ["no build running"];
  const count = `[${live.done}/${live.total}]`;
  const mean = live.phase === "FE" || live.phase === "BE" ? meanJobMs(history, live.phase) : undefined;
  const left = Math.max(0, live.total - live.done);
  const eta = mean !== undefined && left > 0 ? `  ETA ${secs((mean * left) / Math.max(1, jobs))}` : "";
  const head = `build #${live.id}  ${live.phase.padEnd(9)} ${count}${eta}`;
  const bar = progressBar(live.done, live.total, Math.max(10, width - 2));
  const running = [...live.running].slice(0, 6).map(([o, r]) => clip(`  ${r.phase} ${o} (${secs(now - r.since)}): ${r.reason}`, width));
  const timeline = live.phases?.length ? [timelineLine(live, history[0], width, now)] : [];
  // The link is its steps, not one bar.
  const steps = live.phase === "link" ? linkStepsLine(live, history[0], width, now) : undefined;
  return [clip(head, width), ...timeline, ...(steps ? [steps] : [clip(bar, width)]), ...running];
}

export function historyLine(h: HistoryView, width: number, selected: boolean): string {
  const r = h.report;
  const what = h.trigger.length ? h.trigger.slice(0, 2).join(", ") + (h.trigger.length > 2 ? ` +${h.trigger.length - 2}` : "") : "-";
  const be = `BE ${r.backend.compiled} run/${r.backend.cacheHits} cached/${r.backend.unchanged} unchanged`;
  const boot = h.boot ? `  boot ${h.boot.verdict}` : "";
  const kos = r.kernelModules?.length ? `  ko ${r.kernelModules.map((m) => `${m.name}(BE ${m.backend.compiled}/${m.backend.cacheHits})`).join(" ")}` : "";
  const line = `${selected ? ">" : " "} #${String(h.id).padEnd(4)} ${h.ok ? "ok    " : "FAILED"} ${secs(r.ms).padStart(6)}${boot}  FE ${r.frontend.compiled}  ${be}${kos}  ${what}`;
  return clip(line, width);
}

/** The boot panel: the boot running, or the last verdict with the console's last lines. */
export function bootLines(st: StatusView, width: number, maxLog: number): string[] {
  const b = st.boot;
  if (!b) return [];
  const lines: string[] = [];
  if (b.running !== null) lines.push(`boot of build #${b.running}'s kernel: running${b.run ? ` (${b.run})` : ""}`);
  else if (b.waiting) lines.push(`boot of build #${b.waiting.build}'s kernel: waiting (${b.waiting.why})`);
  const busy = b.running !== null || !!b.waiting;
  if (b.last) {
    const l = b.last;
    lines.push(`${busy ? "last " : ""}boot of build #${l.build}: ${l.verdict.toUpperCase()} in ${secs(l.ms)} (${l.accel}): ${l.detail}`);
    for (const c of l.log.slice(-maxLog)) lines.push(`  | ${c}`);
  } else if (!busy) lines.push("boot: none yet (each fresh kernel is booted)");
  return lines.map((l) => clip(l, width));
}

/** Why each job of a build ran. */
export function detailLines(h: HistoryView, width: number): string[] {
  const r = h.report;
  const lines = [`build #${h.id}: ${h.ok ? "ok" : `FAILED (${r.error ?? "?"})`}, triggered by ${h.trigger.join(", ") || "-"}`];
  lines.push(`  phases: FE ${secs(r.frontend.ms)}  thin-link ${secs(r.thinlink.ms)}  BE ${secs(r.backend.ms)}  link ${r.link.skipped ? "skipped" : secs(r.link.ms)}`);
  lines.push(...stepLine("  ", r));
  for (const k of r.kbuild ?? []) lines.push(`  kbuild: ${k}`);
  for (const j of r.frontendJobs ?? []) lines.push(`  FE ${j.object}: ${j.reason}${j.changed ? "" : " (bitcode unchanged: stopped)"}`);
  for (const j of r.backend.jobs ?? []) lines.push(`  BE ${j.object}: ${j.action === "restore" ? "cache hit" : j.reason}`);
  for (const m of r.kernelModules ?? []) {
    lines.push(`  module ${m.ko} (${m.reason}): thin-link ${m.thinlink.skipped ? "skipped" : secs(m.thinlink.ms)}  BE ${m.backend.compiled} run/${m.backend.cacheHits} cached ${secs(m.backend.ms)}  link ${m.link.skipped ? "skipped" : secs(m.link.ms)}`);
    lines.push(...stepLine("    ", m));
    for (const j of m.backend.jobs ?? []) lines.push(`    BE ${j.object}: ${j.action === "restore" ? "cache hit" : j.reason}`);
  }
  if (!(r.frontendJobs?.length || r.backend.jobs?.length || r.kbuild?.length || r.kernelModules?.length)) lines.push("  no job ran");
  if (h.boot) lines.push(`  boot: ${h.boot.verdict} in ${secs(h.boot.ms)} (${h.boot.accel}): ${h.boot.detail}`);
  return lines.map((l) => clip(l, width));
}

export function diagnosticsLines(h: HistoryView | undefined, width: number, max: number): string[] {
  if (!h || h.ok || !h.report.diagnostics) return [];
  return h.report.diagnostics.trimEnd().split("\n").slice(0, max).map((l) => clip(l, width));
}

export function cacheLine(history: readonly HistoryView[], cache: StatusView["cache"], width: number): string {
  let hits = 0;
  let runs = 0;
  for (const h of history) {
    hits += h.report.backend.cacheHits;
    runs += h.report.backend.compiled;
  }
  const rate = hits + runs ? `${Math.round((100 * hits) / (hits + runs))}%` : "-";
  const size = cache ? `${cache.entries} entries, ${(cache.bytes / 1024 ** 2).toFixed(1)} MiB` : "?";
  return clip(`cache: ${size}, hit rate ${rate} over the last ${history.length} builds`, width);
}

/** The shared cache's line of the status, if there is one. */
function sharedCacheLines(shared: StatusView["sharedCache"] | undefined, width: number): string[] {
  return shared ? [clip(sharedCacheText(shared), width)] : [];
}

/** The distcc line of the status, if FE replays go through distcc. */
function distccLines(d: StatusView["distcc"] | undefined, width: number): string[] {
  return d ? [clip(distccText(d), width)] : [];
}

/** FE replays through distcc in one phrase: where, how many went out, how many were
 * compiled here because distcc itself failed, and the last such failure. */
export function distccText(d: NonNullable<StatusView["distcc"]>): string {
  const back = d.fallbacks ? `, ${d.fallbacks} compiled here after distcc failed (last: ${d.lastFallback ?? "?"})` : "";
  return `distcc ${d.hosts} (${d.slots} slots, ${d.source === "option" ? "--distcc" : "as kbuild recorded"}): ${d.remote} FE compiles remote${back}`;
}

/** The shared cache in one phrase: where, how, what it gave, and why it is unused if it is. */
export function sharedCacheText(s: NonNullable<StatusView["sharedCache"]>): string {
  const refused = s.rejected ? `, ${s.rejected} refused` : "";
  const stored = s.write ? `, ${s.stored} stored` : "";
  return `shared ${s.url} (${s.write ? "read-write" : "read-only"}): ${s.hits} hits, ${s.misses} misses${refused}${stored}${s.down ? `; not usable now: ${s.down}` : ""}`;
}

export interface DashboardModel {
  status: StatusView;
  live?: LiveBuild;
  selected: number;
  showDetail: boolean;
  showHelp: boolean;
  jobs: number;
  /** The last boot's whole console (key l), scrolled `consoleScroll` lines up from its end. */
  console?: string[];
  consoleScroll?: number;
}

/** Follows the daemon's event stream: the model after `e`, and what the screen needs (a new
 * status from the daemon, a redraw, nothing). A build that ends leaves no build in progress,
 * whatever the last status said of it. */
export function applyEvent(m: DashboardModel, e: DaemonEvent, now: number): "refresh" | "draw" | "none" {
  const live = m.live;
  switch (e.kind) {
    case "phase": {
      const same = live?.id === e.build;
      m.live = { id: e.build, phase: e.phase, total: e.total, done: 0, running: same ? live.running : new Map(), phases: [...(same ? live.phases ?? [] : []), { phase: e.phase, at: now }], linkSteps: same ? live.linkSteps : undefined };
      m.status.state = "building";
      return "draw";
    }
    case "job-start":
      if (!m.live || m.live.id !== e.build) m.live = { id: e.build, phase: e.phase, total: 0, done: 0, running: new Map() };
      m.live.running.set(e.object, { phase: e.phase, since: now, reason: e.reason });
      return "draw";
    case "job-end":
      if (m.live?.id === e.build) {
        m.live.running.delete(e.object);
        m.live.done++;
      }
      return "draw";
    case "link-step": {
      if (!m.live || m.live.id !== e.build) return "none";
      const steps = (m.live.linkSteps ??= []);
      const open = steps.find((s) => s.step === e.step && s.ms === undefined);
      if (e.ms === undefined) steps.push({ step: e.step, at: now });
      else if (open) open.ms = e.ms;
      else steps.push({ step: e.step, at: now - e.ms, ms: e.ms });
      return "draw";
    }
    case "build-end":
      m.live = undefined;
      if (m.status.current?.id === e.build) m.status.current = null;
      m.selected = 0;
      return "refresh";
    case "boot-start":
    case "boot-end":
      return "refresh";
    case "state":
      m.status.state = e.state;
      return "draw";
    case "log":
      return "none";
    default:
      return "draw";
  }
}

export const HELP = [
  "keys: q quit   b build now   up/down select a build   enter show why its jobs ran   ? help",
  "      l the last boot's whole console (pgup/pgdn scroll, l again closes)",
];

/** The boot console view: as many lines as fit, ending `scroll` lines before the last. */
export function consoleLines(lines: readonly string[], scroll: number, width: number, room: number): string[] {
  const end = Math.max(0, lines.length - scroll);
  return lines.slice(Math.max(0, end - room), end).map((l) => clip(l, width));
}

/** The whole screen as lines, for a terminal of `width` x `height`. */
export function renderDashboard(m: DashboardModel, width: number, height: number, now = Date.now()): string[] {
  const history = m.status.history ?? [];
  const rule = (title: string) => clip(`-- ${title} ${"-".repeat(Math.max(0, width - title.length - 4))}`, width);
  // Before the first event of a build (the startup scan) the status names it: the panel says
  // what the state line says.
  const cur = m.status.current;
  const live = m.live ?? (cur ? { id: cur.id, phase: cur.phase, total: 0, done: 0, running: new Map() } : undefined);
  const out: string[] = [...headerLines(m.status, width), rule("current build"), ...currentLines(live, history, width, m.jobs, now)];
  const sel = history[Math.min(m.selected, Math.max(0, history.length - 1))];
  const diag = diagnosticsLines(history[0], width, Math.max(3, Math.floor(height / 4)));
  const detail = m.showDetail && sel ? detailLines(sel, width) : [];
  if (m.status.boot) out.push(rule("boot"), ...bootLines(m.status, width, Math.max(2, Math.floor(height / 5))));
  const reserved = 2 + (diag.length ? diag.length + 1 : 0) + (detail.length ? detail.length + 1 : 0) + (m.showHelp ? HELP.length : 1);
  const room = Math.max(1, height - out.length - reserved);
  if (m.console) {
    const scroll = m.consoleScroll ?? 0;
    out.push(rule(`boot console (${m.console.length} lines${scroll ? `, ${scroll} up` : ""}; l closes)`), ...consoleLines(m.console, scroll, width, room));
    out.push(...(m.showHelp ? HELP : ["? help  q quit  b build"]).map((l) => clip(l, width)));
    return out.slice(0, height);
  }
  out.push(rule("recent builds"));
  if (!history.length) out.push("  none yet");
  const start = Math.max(0, Math.min(m.selected - room + 1, history.length - room));
  for (let i = start; i < Math.min(history.length, start + room); i++) out.push(historyLine(history[i], width, i === m.selected));
  if (detail.length) out.push(rule("why"), ...detail);
  if (diag.length) out.push(rule(`diagnostics of build #${history[0].id}`), ...diag);
  out.push(cacheLine(history, m.status.cache, width), ...sharedCacheLines(m.status.sharedCache, width), ...distccLines(m.status.distcc, width));
  out.push(...(m.showHelp ? HELP : ["? help  q quit  b build"]).map((l) => clip(l, width)));
  return out.slice(0, height);
}

/** The plain-text snapshot of `ktld status` (stdout not a terminal). */
export function statusText(st: StatusView, width = 100): string {
  const history = st.history ?? [];
  const lines = [...headerLines(st, width)];
  if (st.current) lines.push(`building: #${st.current.id} in phase ${st.current.phase}`);
  lines.push(...bootLines(st, width, 10));
  if (history.length) {
    lines.push("recent builds:");
    for (const h of history) lines.push(historyLine(h, width, false));
    const diag = diagnosticsLines(history[0], width, 40);
    if (diag.length) lines.push(`diagnostics of build #${history[0].id}:`, ...diag);
  }
  lines.push(cacheLine(history, st.cache, width), ...sharedCacheLines(st.sharedCache, width), ...distccLines(st.distcc, width));
  return `${lines.join("\n")}\n`;
}
