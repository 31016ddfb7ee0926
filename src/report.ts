// How a build is told: the summary table and the --json object. Pure functions.
import type { BackendReport } from "./backendphase";
import type { BuildReport } from "./build";
import type { BackendJson, BuildJson, StepJson, ThinLinkJson } from "./protocol";
import type { StepReport, ThinLinkReport } from "./target";

const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

export function summaryTable(r: BuildJson): string {
  const rows: string[][] = [
    ["phase", "run", "cached", "unchanged", "time"],
    ["frontend", String(r.frontend.compiled), "-", "-", secs(r.frontend.ms)],
    r.thinlink.skipped
      ? ["thin-link", "0", "-", "1", secs(r.thinlink.ms)]
      : ["thin-link", "1", "-", `${r.backend.modules - r.thinlink.indexChanged} idx`, secs(r.thinlink.ms)],
    ["backend", String(r.backend.compiled), String(r.backend.cacheHits), String(r.backend.unchanged), secs(r.backend.ms)],
    ["link", r.link.skipped ? "0" : "1", "-", r.link.skipped ? "1" : "-", secs(r.link.ms)],
    // Kernel modules that did something: one row each (BE jobs run / cached / unchanged).
    ...(r.kernelModules ?? []).map((m) => [`${m.name}.ko`, String(m.backend.compiled), String(m.backend.cacheHits), String(m.backend.unchanged),
      secs(m.thinlink.ms + m.backend.ms + m.link.ms)]),
    ...(r.modulesFinal ? [["modpost+ko", String(r.modulesFinal.steps.length), "-", "-", secs(r.modulesFinal.ms)]] : []),
    ["total", "", "", "", secs(r.ms)],
  ];
  const widths = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
  const lines = rows.map((row) => row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]) : cell.padStart(widths[c]))).join("  "));
  lines.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  const fe = r.frontend;
  if (fe.remote !== undefined) {
    const back = fe.fallbacks ?? [];
    lines.push(`frontend through distcc: ${fe.remote} remote${back.length ? `, ${back.length} compiled here after distcc failed (${back[0].object}: ${back[0].why})` : ""}`);
  }
  const kos = r.kernelModules?.length ? `; ${r.kernelModules.map((m) => m.ko).join(", ")} made` : "";
  const verdict = r.ok ? `vmlinux is up to date (${r.backend.modules} bitcode units)${kos}` : `build FAILED: ${r.error ?? "unknown error"}`;
  return `${lines.join("\n")}\n${verdict}\n`;
}

/** A BE phase's part of the --json object. `units`: the bitcode units it planned (`modules`,
 * the old name, is kept one more release). */
function backendJson(b: BackendReport): BackendJson {
  return {
    units: b.modules, modules: b.modules, compiled: b.compiled, cacheHits: b.cacheHits, sharedHits: b.sharedHits, unchanged: b.unchanged, ms: b.ms,
    jobs: b.jobs.map((j) => ({
      object: j.object, action: j.action, reason: j.reason, ...(j.ms !== undefined ? { ms: j.ms } : {}), ...(j.key ? { key: j.key } : {}),
    })),
  };
}

function stepJson(s: StepReport): StepJson {
  return { ms: s.ms, skipped: s.skipped, ...(s.reason ? { reason: s.reason } : {}), ...(s.steps ? { steps: s.steps.map((x) => ({ ...x })) } : {}) };
}

function thinLinkJson(s: ThinLinkReport): ThinLinkJson {
  return { ...stepJson(s), indexChanged: s.indexChanged };
}

/** The documented --json object of `ktld build`: every link target's steps in one shape. */
export function jsonReport(r: BuildReport): BuildJson {
  return {
    ok: r.ok,
    ...(r.error ? { error: r.error, diagnostics: r.diagnostics ?? "" } : {}),
    frontend: {
      compiled: r.frontend.compiled, ms: r.frontend.ms,
      ...(r.frontend.remote !== undefined ? { remote: r.frontend.remote, fallbacks: (r.frontend.fallbacks ?? []).map((f) => ({ ...f })) } : {}),
    },
    thinlink: thinLinkJson(r.thinlink),
    backend: backendJson(r.backend),
    link: stepJson(r.link),
    ...(r.vmlinuxReadyMs !== undefined ? { vmlinuxReadyMs: r.vmlinuxReadyMs } : {}),
    kernelModules: (r.kernelModules ?? []).map((m) => ({
      name: m.name, ko: m.ko, reason: m.reason, bitcode: m.bitcode, thinlink: thinLinkJson(m.thinlink), backend: backendJson(m.backend), link: stepJson(m.link),
    })),
    ...(r.modulesFinal ? { modulesFinal: r.modulesFinal } : {}),
    ms: r.ms,
    ...(r.profile ? { profile: r.profile } : {}),
  };
}

/** A build's report again from its --json object (the history's last build, after a
 * restart of the daemon): what jsonReport made of it, with its lists copied. */
export function reportFromJson(j: BuildJson): BuildReport {
  const backend = (b: BackendJson): BackendReport => ({
    modules: b.units ?? b.modules, compiled: b.compiled, cacheHits: b.cacheHits, sharedHits: b.sharedHits ?? 0, unchanged: b.unchanged, ms: b.ms, jobs: [...(b.jobs ?? [])],
  });
  const thin = (t: ThinLinkJson | undefined): ThinLinkReport => ({ ms: t?.ms ?? 0, skipped: t?.skipped ?? true, indexChanged: t?.indexChanged ?? 0, ...(t?.reason ? { reason: t.reason } : {}) });
  const step = (s: StepJson | undefined): StepReport => ({
    ms: s?.ms ?? 0, skipped: s?.skipped ?? true, ...(s?.reason ? { reason: s.reason } : {}), ...(s?.steps ? { steps: s.steps.map((x) => ({ ...x })) } : {}),
  });
  return {
    ok: j.ok, ...(j.error ? { error: j.error, diagnostics: j.diagnostics } : {}),
    frontend: { compiled: j.frontend.compiled, ms: j.frontend.ms, ...(j.frontend.remote !== undefined ? { remote: j.frontend.remote, fallbacks: (j.frontend.fallbacks ?? []).map((f) => ({ ...f })) } : {}) }, thinlink: thin(j.thinlink), backend: backend(j.backend), link: step(j.link), ms: j.ms,
    ...(j.vmlinuxReadyMs !== undefined ? { vmlinuxReadyMs: j.vmlinuxReadyMs } : {}),
    kernelModules: (j.kernelModules ?? []).map((m) => ({ name: m.name, ko: m.ko, reason: m.reason, bitcode: m.bitcode, thinlink: thin(m.thinlink), backend: backend(m.backend), link: step(m.link) })),
    ...(j.modulesFinal ? { modulesFinal: { ...j.modulesFinal, steps: [...j.modulesFinal.steps] } } : {}),
  };
}
