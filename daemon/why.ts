// `ktld why vmlinux` (or `vmlinux.o`): the thin-link and link decisions of the builds in the
// history, as FE and BE jobs have theirs. Pure: over history entries, newest first.
import type { BuildHistoryEntry } from "../src/store";

/** The targets whose decisions are the link's rather than a job's. */
export const LINK_TARGETS: ReadonlySet<string> = new Set(["vmlinux", "vmlinux.o"]);

interface Decision {
  readonly skipped: boolean;
  readonly reason?: string;
}

export interface WhyLink {
  readonly object: string;
  /** The newest build that relinked vmlinux, or null when none in the history did. */
  readonly build: number | null;
  readonly trigger?: readonly string[];
  readonly thinlink?: Decision & { readonly indexChanged?: number };
  readonly link?: Decision;
  /** Why the builds after it (or every build, when none relinked) kept vmlinux: the newest's reason. */
  readonly kept?: { readonly build: number; readonly reason: string };
  readonly reason?: string;
  readonly boot?: unknown;
}

type LinkReport = { thinlink?: { skipped?: boolean; reason?: string; indexChanged?: number }; link?: { skipped?: boolean; reason?: string } };

export function whyLink(object: string, history: readonly BuildHistoryEntry[]): WhyLink {
  const linkOf = (h: BuildHistoryEntry) => (h.report as LinkReport | undefined)?.link;
  const newest = history.find((h) => linkOf(h));
  const kept = newest && linkOf(newest)?.skipped ? { build: newest.id, reason: linkOf(newest)?.reason ?? "no link input changed" } : undefined;
  const linked = history.find((h) => h.ok && linkOf(h)?.skipped === false);
  if (!linked) return { object, build: null, reason: "not relinked by any recent build", ...(kept ? { kept } : {}) };
  const r = linked.report as LinkReport;
  return {
    object, build: linked.id, trigger: linked.trigger,
    thinlink: { skipped: !!r.thinlink?.skipped, ...(r.thinlink?.reason ? { reason: r.thinlink.reason } : {}), ...(r.thinlink?.indexChanged !== undefined ? { indexChanged: r.thinlink.indexChanged } : {}) },
    link: { skipped: false, ...(r.link?.reason ? { reason: r.link.reason } : {}) },
    ...(kept && kept.build !== linked.id ? { kept } : {}),
    ...(linked.boot ? { boot: linked.boot } : {}),
  };
}
