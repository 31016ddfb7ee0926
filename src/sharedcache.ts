// A team-shared native cache behind the local one, on a Redis server the team runs
// (`--shared-cache redis://host:port`). Read-only unless `--shared-cache-write` (CI fills it,
// developers read it).
//
// An entry is `ktld:be1:<shared key>` (src/backend.ts, sharedBackendKey: no path of the tree,
// no install time of clang, so two checkouts and two machines meet on it) holding the
// native's sha256 (32 bytes) and then its bytes. Every entry is checked on the way in: its
// bytes must hash to its header and be a whole ELF object, else it is counted as rejected and
// the job compiles. The server down, refusing, or slower than the timeout: the cache is left
// alone for a while (one line says so) and the build goes on with the local cache only.
import { createHash } from "node:crypto";
import { KtldError } from "./base/errors";
import { Hash, isWholeElf64 } from "./base/hash";
import { RedisClient } from "./resp";

export interface SharedCacheConfig {
  /** `redis://host[:port]`. */
  readonly url: string;
  /** Natives compiled here are stored too (CI); otherwise read-only. */
  readonly write: boolean;
  /** Any one command slower than this and the server counts as down. */
  readonly timeoutMs?: number;
}

/** What `ktld status` and `ktld cache stats` show of the shared cache. */
export interface SharedCacheState {
  readonly url: string;
  readonly write: boolean;
  /** Why it is not being used just now. */
  readonly down?: string;
  readonly hits: number;
  readonly misses: number;
  /** Entries whose bytes did not match their hash or were no whole object. */
  readonly rejected: number;
  readonly stored: number;
}

const PREFIX = "ktld:be1:";
/** After a failure the server is left alone this long. */
const RETRY_AFTER_MS = 30_000;

export function parseSharedCacheUrl(url: string): { host: string; port: number } {
  const m = /^redis:\/\/([^:/]+)(?::(\d+))?\/?$/.exec(url);
  if (!m) throw new KtldError(`--shared-cache ${url}: ktld speaks to Redis; give redis://HOST[:PORT]`);
  return { host: m[1], port: m[2] ? Number(m[2]) : 6379 };
}

/** An entry's bytes from what the server holds, or why they are refused. Pure. */
export function openEntry(value: Buffer): { bytes: Buffer; hash: Hash } | { refused: string } {
  if (value.length < 32) return { refused: `${value.length} bytes, shorter than its header` };
  const bytes = value.subarray(32);
  const hash = createHash("sha256").update(bytes).digest("hex");
  if (hash !== value.subarray(0, 32).toString("hex")) return { refused: "its bytes do not match its hash" };
  if (!isWholeElf64(bytes)) return { refused: "not a whole ELF object" };
  return { bytes, hash };
}

export function makeEntry(bytes: Buffer, hash: Hash): Buffer {
  return Buffer.concat([Buffer.from(hash, "hex"), bytes]);
}

export class SharedCache {
  private hits = 0;
  private misses = 0;
  private rejected = 0;
  private stored = 0;
  private client?: Promise<RedisClient>;
  private down?: { why: string; until: number };
  private readonly host: string;
  private readonly port: number;
  private readonly timeoutMs: number;

  constructor(readonly config: SharedCacheConfig, private readonly log: (line: string) => void = () => {}) {
    ({ host: this.host, port: this.port } = parseSharedCacheUrl(config.url));
    this.timeoutMs = config.timeoutMs ?? 2000;
  }

  state(): SharedCacheState {
    const down = this.down && Date.now() < this.down.until ? this.down.why : undefined;
    return { url: this.config.url, write: this.config.write, ...(down ? { down } : {}), hits: this.hits, misses: this.misses, rejected: this.rejected, stored: this.stored };
  }

  /** The native filed under `key`, checked; undefined on a miss, a refused entry, or the
   * server unusable. Never throws. */
  async get(key: Hash, what: string): Promise<{ bytes: Buffer; hash: Hash } | undefined> {
    const value = await this.send(["GET", PREFIX + key]);
    if (value === undefined) return undefined;
    if (value === null || !Buffer.isBuffer(value)) {
      this.misses++;
      return undefined;
    }
    const entry = openEntry(value);
    if ("refused" in entry) {
      this.rejected++;
      this.log(`ktld: the shared cache's native for ${what} was refused (${entry.refused}); compiling it here`);
      return undefined;
    }
    this.hits++;
    return entry;
  }

  /** Stores a native (write mode only). Never throws. */
  async put(key: Hash, bytes: Buffer, hash: Hash): Promise<void> {
    if (!this.config.write) return;
    const r = await this.send(["SET", PREFIX + key, makeEntry(bytes, hash)]);
    if (r === "OK") this.stored++;
  }

  close(): void {
    void this.client?.then((c) => c.close(), () => undefined);
    this.client = undefined;
  }

  /** One command's reply, or undefined (and the server left alone a while) on any failure. */
  private async send(args: (string | Buffer)[]): Promise<unknown> {
    if (this.down && Date.now() < this.down.until) return undefined;
    try {
      this.client ??= RedisClient.connect(this.host, this.port, this.timeoutMs);
      const c = await this.client;
      // A connection the server closed since the last command counts as a failure: never a
      // loop of reconnections to a server that closes each one.
      const r = await c.command(args, this.timeoutMs);
      if (this.down) {
        this.log(`ktld: the shared cache ${this.config.url} answers again`);
        this.down = undefined;
      }
      return r;
    } catch (e) {
      this.close();
      const why = (e as Error).message;
      if (!this.down) this.log(`ktld: the shared cache ${this.config.url} is not usable (${why}); the local cache alone for now`);
      this.down = { why, until: Date.now() + RETRY_AFTER_MS };
      return undefined;
    }
  }
}
