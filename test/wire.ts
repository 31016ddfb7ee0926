// Wire objects for the pure tests of views and reports: the daemon's own types
// (src/protocol.ts) with every field a test does not care about at its empty value.
import type { BackendJson, HistoryReportJson, KernelModuleJson, StatusResult, StepJson, ThinLinkJson } from "../src/protocol";

export function backendJson(over: Partial<BackendJson> = {}): BackendJson {
  const units = over.units ?? over.modules ?? 0;
  return { compiled: 0, cacheHits: 0, sharedHits: 0, unchanged: 0, ms: 0, jobs: [], ...over, units, modules: units };
}

export function thinLinkJson(over: Partial<ThinLinkJson> = {}): ThinLinkJson {
  return { ms: 0, skipped: false, indexChanged: 0, ...over };
}

export function stepJson(over: Partial<StepJson> = {}): StepJson {
  return { ms: 0, skipped: false, ...over };
}

export type ReportOver = Omit<Partial<HistoryReportJson>, "thinlink" | "backend" | "link"> & { thinlink?: Partial<ThinLinkJson>; backend?: Partial<BackendJson>; link?: Partial<StepJson> };

export function reportJson(over: ReportOver = {}): HistoryReportJson {
  return {
    ok: true, frontend: { compiled: 0, ms: 0 }, kernelModules: [], ms: 0, ...over,
    thinlink: thinLinkJson(over.thinlink), backend: backendJson(over.backend), link: stepJson(over.link),
  };
}

export function kernelModuleJson(over: Omit<Partial<KernelModuleJson>, "thinlink" | "backend" | "link"> & { thinlink?: Partial<ThinLinkJson>; backend?: Partial<BackendJson>; link?: Partial<StepJson> }): KernelModuleJson {
  return {
    name: "m", ko: "m.ko", reason: "", bitcode: 0, ...over,
    thinlink: thinLinkJson(over.thinlink), backend: backendJson(over.backend), link: stepJson(over.link),
  };
}

export function statusJson(over: Partial<StatusResult> = {}): StatusResult {
  return {
    buildDir: "/", pid: 1, protocol: 1, state: "idle", degraded: null, stale: false, uptimeMs: 0,
    config: { distMode: false }, clang: "", modules: 0, kernelModules: { built: 0, leftToKbuild: [] },
    current: null, pending: 0, last: null, notHandled: [], cache: { entries: 0, bytes: 0 }, sharedCache: null,
    memory: { anonMiB: 0, fileMiB: 0, heapMiB: 0 }, boot: null, history: [], ...over,
    units: over.units ?? over.modules ?? 0,
  };
}
