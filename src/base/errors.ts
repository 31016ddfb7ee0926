// Errors a user can act on: one line that names the fix, and the exit status to use.

export const EXIT_OK = 0;
export const EXIT_FAILED = 1;
export const EXIT_USAGE = 2;

/** A problem with the environment or the input (not a failed compile): exit status 2. */
export class KtldError extends Error {
  constructor(message: string, readonly exitCode: number = EXIT_USAGE) {
    super(message);
    this.name = "KtldError";
  }
}

/** A compile or link that ran and failed: its diagnostics are the message. Exit status 1. */
export class BuildFailure extends Error {
  constructor(readonly step: string, readonly diagnostics: string, why?: string) {
    super(why ? `${step} failed: ${why}` : `${step} failed`);
    this.name = "BuildFailure";
  }
}

/** A build stopped because newer changes arrived (or the daemon is stopping). */
export class Cancelled extends Error {
  constructor() {
    super("cancelled");
    this.name = "Cancelled";
  }
}

/** Errors that mean "the state dir cannot take this write", not "ktld is broken". */
export const NO_ROOM: ReadonlySet<string> = new Set(["ENOSPC", "EDQUOT", "EROFS", "EFBIG"]);
