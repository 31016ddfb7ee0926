// What one build works with, made once per build and handed to every step: the tree, the
// tools, the state dir and its store, the pool, the hashes, the caller's hooks, and the one
// writer of the store, which owns the full-disk rule.
import { NO_ROOM } from "./base/errors";
import { Cancelled } from "./base/errors";
import { HashCache } from "./base/hash";
import { kbuildEnv } from "./kbuild/env";
import type { KbuildTree } from "./kbuild/tree";
import { JobPool } from "./pool";
import type { DaemonEvent } from "./protocol";
import { StateDir } from "./state";
import { Store } from "./store";
import { Toolchain } from "./toolchain";
import type { SharedCache } from "./sharedcache";

/** What a build writes that a boot of the kernel reads. */
export type Replaced = "vmlinux" | "modules";

export interface BuildHooks {
  /** kbuild-style lines. */
  readonly log?: (line: string) => void;
  /** Phase and job events, for subscribers of the daemon. */
  readonly onEvent?: (e: DaemonEvent) => void;
  /** Aborted: running jobs are killed and the build ends with Cancelled. */
  readonly signal?: AbortSignal;
  readonly buildId?: number;
  /** Files that changed while the build ran (the daemon's pending events). */
  readonly changedMeanwhile?: () => Iterable<string>;
  /** vmlinux was relinked and is whole: called before the build's bookkeeping (the mtimes
   * make compares, the store's records). */
  readonly onVmlinuxFresh?: () => void;
  /** The build is about to overwrite what a boot of the current kernel reads: vmlinux
   * (its link starts) or the `.ko` files (kbuild's final module link starts). Called at
   * that moment, never for a build that ends with the old files in place. */
  readonly onReplacing?: (what: Replaced) => void;
}

/** The one writer of the store during a build. A write that finds no room (a full disk, a
 * full LMDB map) is said once, and the build goes on: what was not written is redone by a
 * later build. Any other failure of a write fails the build. */
export class StoreWriter {
  private warned = false;
  private readonly pending: Promise<void>[] = [];
  /** Writes skipped for want of room in this build. */
  skipped = 0;

  constructor(private readonly store: Store, private readonly stateDir: string, private readonly log: (line: string) => void) {}

  /** No room for a write (`e`: its error, if it was tried). Throws `e` if it is another error. */
  noRoom(e?: unknown): void {
    const code = (e as NodeJS.ErrnoException | undefined)?.code ?? "";
    const msg = (e as Error | undefined)?.message ?? "";
    if (e !== undefined && !NO_ROOM.has(code) && !/MDB_MAP_FULL|No space left|ENOSPC|read-only/i.test(msg)) throw e;
    this.skipped++;
    if (this.warned) return;
    this.warned = true;
    this.log(`ktld: no room in the state dir ${this.stateDir} (${code || msg || "ENOSPC"}); records are not being written and natives are not being cached: free some space or pass --state-dir DIR`);
  }

  /** Runs a store write, if the store has room; whether it was written. */
  async write(w: () => Promise<unknown>): Promise<boolean> {
    if (!this.store.roomy()) {
      this.noRoom();
      return false;
    }
    try {
      await w();
      return true;
    } catch (e) {
      this.noRoom(e);
      return false;
    }
  }

  /** A write started now and awaited by `settle` (so a failed one fails this build instead
   * of rejecting unhandled). */
  later(w: () => Promise<unknown>): void {
    this.pending.push(this.write(w).then(() => undefined));
  }

  /** A write already under way (a cache restore's), awaited by `settle`. */
  track(p: Promise<void>): void {
    this.pending.push(p);
  }

  /** Every write started so far is done. */
  async settle(): Promise<void> {
    while (this.pending.length) await Promise.all(this.pending.splice(0));
  }
}

export interface BuildContextInit {
  readonly tree: KbuildTree;
  readonly tools: Toolchain;
  readonly state: StateDir;
  readonly store: Store;
  readonly pool: JobPool;
  /** Kept across builds by the daemon: files whose stat did not change are not rehashed. */
  readonly hashes?: HashCache;
  readonly hooks?: BuildHooks;
  /** object → the files it `.incbin`s, if the caller keeps that up to date (else each BE
   * phase scans every unit's source and headers again). */
  readonly incbinOf?: ReadonlyMap<string, readonly string[]>;
  /** Parallel jobs for the kbuild steps ktld runs (`make -j`). */
  readonly jobs: number;
  /** The team's native cache behind the local one (`--shared-cache`). */
  readonly shared?: SharedCache;
  /** `--be-executor CMD`: BE jobs go to it as one DTLTO batch (src/executor.ts). */
  readonly beExecutor?: string;
}

export class BuildContext {
  readonly tree: KbuildTree;
  readonly tools: Toolchain;
  readonly state: StateDir;
  readonly store: Store;
  readonly pool: JobPool;
  readonly hashes: HashCache;
  readonly hooks: BuildHooks;
  readonly incbinOf?: ReadonlyMap<string, readonly string[]>;
  readonly jobs: number;
  readonly shared?: SharedCache;
  readonly beExecutor?: string;
  readonly log: (line: string) => void;
  readonly emit: (e: DaemonEvent) => void;
  readonly signal?: AbortSignal;
  /** The build's id (0 outside the daemon). */
  readonly id: number;
  readonly writer: StoreWriter;
  private envOnce?: Promise<Record<string, string>>;

  /** `shared`: the writer of a caller that writes to the store around the build too (the
   * session's), and the environment already read. */
  constructor(private readonly init: BuildContextInit, shared?: { writer?: StoreWriter; env?: Promise<Record<string, string>> }) {
    this.tree = init.tree;
    this.tools = init.tools;
    this.state = init.state;
    this.store = init.store;
    this.pool = init.pool;
    this.hashes = init.hashes ?? new HashCache(init.tree.buildDir);
    this.hooks = init.hooks ?? {};
    this.incbinOf = init.incbinOf;
    this.jobs = init.jobs;
    this.shared = init.shared;
    this.beExecutor = init.beExecutor;
    this.log = this.hooks.log ?? (() => {});
    this.emit = this.hooks.onEvent ?? (() => {});
    this.signal = this.hooks.signal;
    this.id = this.hooks.buildId ?? 0;
    this.writer = shared?.writer ?? new StoreWriter(init.store, init.state.dir, this.log);
    this.envOnce = shared?.env;
  }

  /** The same build with other `.incbin` knowledge (a module's units are its bitcode files,
   * not its objects): one writer, one environment. */
  with(over: Pick<BuildContextInit, "incbinOf">): BuildContext {
    return new BuildContext({ ...this.init, hashes: this.hashes, ...over }, { writer: this.writer, env: this.envOnce });
  }

  get buildDir(): string {
    return this.tree.buildDir;
  }

  checkCancelled(): void {
    if (this.signal?.aborted) throw new Cancelled();
  }

  /** kbuild's exported environment (read once per build, cached in the state dir). */
  env(): Promise<Record<string, string>> {
    this.envOnce ??= kbuildEnv(this.tree.buildDir, this.tree.makeVars, this.state.dir);
    return this.envOnce;
  }
}
