// The command-line options the daemon takes, shared by `ktld start` (which passes them on)
// and the daemon's own entry point: one table, so that the two never disagree.

import { KtldError } from "./base/errors";
import { parseSharedCacheUrl, SharedCacheConfig } from "./sharedcache";

/** parseArgs option specs the daemon understands. */
export const DAEMON_OPTIONS = {
  "build-dir": { type: "string", default: "." },
  "state-dir": { type: "string" },
  jobs: { type: "string", short: "j" },
  "idle-timeout": { type: "string" },
  "settle-ms": { type: "string" },
  boot: { type: "boolean", default: false },
  "boot-run": { type: "string" },
  "boot-timeout": { type: "string" },
  "boot-mem": { type: "string" },
  "boot-append": { type: "string" },
  "install-mod-path": { type: "string" },
  "shared-cache": { type: "string" },
  "shared-cache-write": { type: "boolean", default: false },
  distcc: { type: "boolean", default: false },
  "be-executor": { type: "string" },
} as const;

/** The shared cache the options ask for (`--shared-cache URL`, `--shared-cache-write`), or
 * undefined; the URL checked here, so that a bad one is refused before anything starts. */
export function sharedCacheOption(o: { "shared-cache"?: string; "shared-cache-write"?: boolean }): SharedCacheConfig | undefined {
  if (!o["shared-cache"]) {
    if (o["shared-cache-write"]) throw new KtldError("--shared-cache-write needs --shared-cache redis://HOST[:PORT]");
    return undefined;
  }
  parseSharedCacheUrl(o["shared-cache"]);
  return { url: o["shared-cache"], write: o["shared-cache-write"] ?? false };
}
