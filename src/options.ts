// The command-line options the daemon takes, shared by `ktld start` (which passes them on)
// and the daemon's own entry point: one table, so that the two never disagree.

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
} as const;
