// View models: pure functions from the daemon's status to text.

export interface StatusView {
  buildDir: string;
  pid: number;
  state: string;
  stale: boolean;
  degraded: string | null;
  uptimeMs: number;
  modules: number;
  clang: string;
  config: { arch?: string; distMode?: boolean };
  current: { id: number; phase: string } | null;
  pending: number;
  history?: { id: number; startedAt: number; trigger: string[]; ok: boolean; report: { frontend: { compiled: number }; backend: { compiled: number; cacheHits: number; unchanged: number }; ms: number; error?: string } }[];
}

function duration(ms: number): string {
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}

function clip(s: string, width: number): string {
  return s.length <= width ? s : `${s.slice(0, Math.max(0, width - 1))}…`;
}

/** The plain-text snapshot of `ktld status`. */
export function statusText(st: StatusView, width = 100): string {
  const lines: string[] = [];
  lines.push(`tree    ${st.buildDir}`);
  lines.push(`daemon  pid ${st.pid}, up ${duration(st.uptimeMs)}, ${st.modules} modules, ${st.config.arch ?? "?"}${st.config.distMode ? ", dist mode" : ""}`);
  lines.push(`clang   ${st.clang}`);
  let state = st.state;
  if (st.current) state += ` (build #${st.current.id}: ${st.current.phase})`;
  if (st.stale) state += " - vmlinux is stale: the last build failed";
  lines.push(`state   ${state}`);
  if (st.degraded) lines.push(`watch   ${st.degraded}`);
  if (st.history?.length) {
    lines.push("", "recent builds:");
    for (const h of st.history) {
      const r = h.report;
      const what = h.trigger.length ? h.trigger.slice(0, 3).join(", ") + (h.trigger.length > 3 ? ` +${h.trigger.length - 3}` : "") : "-";
      lines.push(`  #${h.id} ${h.ok ? "ok    " : "FAILED"} ${(r.ms / 1000).toFixed(1).padStart(5)} s  FE ${r.frontend.compiled}  BE ${r.backend.compiled} run/${r.backend.cacheHits} cached/${r.backend.unchanged} unchanged  ${what}`);
    }
  }
  return lines.map((l) => clip(l, width)).join("\n") + "\n";
}
