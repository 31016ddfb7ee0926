// Backend: one ThinLTO BE compile per module. Planning here is pure: from a module's inputs
// and what the store remembers, decide whether to do nothing, restore from the cache, or
// compile, and say why.
import { Hash, hashFields } from "./base/hash";
import { indexPath, nativePath } from "./kbuild/names";
import { CacheEntry, UnitRecord } from "./store";

/** Everything a module's native is made from. Two equal BackendInputs make equal natives. */
export interface BackendInputs {
  readonly object: string;
  readonly bitcode: Hash;
  readonly index: Hash;
  /** Imported modules (from `<obj>.imports`) → their bitcode hashes. */
  readonly imports: Readonly<Record<string, Hash>>;
  readonly argv: readonly string[];
  /** Identity of the clang binary (path, size, mtime, version). */
  readonly clang: string;
  /** Files the module `.incbin`s → their content hash (null: missing). */
  readonly incbin: Readonly<Record<string, Hash | null>>;
  readonly cwd: string;
}

/** The BE command, run from the build dir (the index names modules by these relative paths). */
export function backendArgv(compiler: string, flags: readonly string[], object: string, output = nativePath(object)): string[] {
  return [
    compiler, ...flags, "-x", "ir", "-fno-lto", "-Wno-unused-command-line-argument",
    `-fthinlto-index=${indexPath(object)}`, "-c", "-o", output, object,
  ];
}

/** Per argv array: a unit's argv is made once per import of the tree (BackendPhase keeps
 * it), so a build hashes only the argvs it has not seen. Hashing each unit's hundred-odd
 * flags on every build was a tenth of the BE plan's time. */
const argvHashes = new WeakMap<readonly string[], Hash>();

export function argvHash(argv: readonly string[]): Hash {
  let h = argvHashes.get(argv);
  if (h === undefined) argvHashes.set(argv, (h = hashFields(argv)));
  return h;
}

function sortedEntries(r: Readonly<Record<string, string | null>>): string[] {
  return Object.keys(r).sort().flatMap((k) => [k, r[k] ?? "<missing>"]);
}

/** The cache key of a BE job. */
export function backendKey(inp: BackendInputs): Hash {
  return hashFields([
    "ktld-be-v1", inp.object, inp.cwd, inp.bitcode, inp.index, argvHash(inp.argv), inp.clang,
    "imports", ...sortedEntries(inp.imports), "incbin", ...sortedEntries(inp.incbin),
  ]);
}

/** The key a BE job's native is shared under between checkouts and machines
 * (src/sharedcache.ts): the local key's parts but where the tree lies (`cwd`) and where and
 * when clang was installed. Undefined when the job's command names the build dir itself:
 * then its native may hold that path, and it is not shared. Pure. */
export function sharedBackendKey(inp: BackendInputs, clangPortable: string): Hash | undefined {
  if (inp.argv.some((a) => a.includes(inp.cwd))) return undefined;
  return hashFields([
    "ktld-be-shared-v1", inp.object, inp.bitcode, inp.index, argvHash(inp.argv), clangPortable,
    "imports", ...sortedEntries(inp.imports), "incbin", ...sortedEntries(inp.incbin),
  ]);
}

/** Whether the native in the build dir is the one the record says was written;
 * "kbuild-current": ktld has no record, and kbuild (dist mode) made it after its inputs. */
export type NativeState = "as-recorded" | "missing" | "modified" | "kbuild-current";

export type BackendAction =
  | { readonly kind: "unchanged"; readonly key: Hash; readonly reason: string }
  | { readonly kind: "adopt"; readonly key: Hash; readonly reason: string }
  | { readonly kind: "restore"; readonly key: Hash; readonly entry: CacheEntry; readonly reason: string }
  | { readonly kind: "compile"; readonly key: Hash; readonly reason: string };

function changedKeys(a: Readonly<Record<string, string | null>>, b: Readonly<Record<string, string | null>>): string[] {
  const keys = new Set([...Object.keys(a), ...Object.keys(b)]);
  return [...keys].filter((k) => a[k] !== b[k]).sort();
}

/** Why the inputs differ from what the last BE of this module was made from. */
export function explainChange(inp: BackendInputs, rec: UnitRecord | undefined): string {
  if (!rec) return "no native from ktld yet";
  const why: string[] = [];
  if (rec.bitcode !== inp.bitcode) why.push("bitcode changed");
  const imports = changedKeys(rec.imports, inp.imports);
  if (rec.index !== inp.index) {
    why.push(imports.length ? `index changed: imports ${imports.join(", ")}` : "index changed");
  } else if (imports.length) {
    why.push(`imported bitcode changed: ${imports.join(", ")}`);
  }
  if (rec.argv !== argvHash(inp.argv)) why.push("BE flags changed");
  if (rec.clang !== inp.clang) why.push("clang changed");
  const inc = changedKeys(rec.incbin, inp.incbin);
  if (inc.length) why.push(`.incbin ${inc.join(", ")} changed`);
  return why.length ? why.join("; ") : "inputs changed";
}

/** Decides what to do for one module. Pure. */
export function planBackend(
  inp: BackendInputs,
  rec: UnitRecord | undefined,
  native: NativeState,
  cached: (key: Hash) => CacheEntry | undefined,
): BackendAction {
  const key = backendKey(inp);
  if (!rec && native === "kbuild-current") return { kind: "adopt", key, reason: "kbuild's native, made from these inputs" };
  if (rec && rec.key === key) {
    if (native === "as-recorded") return { kind: "unchanged", key, reason: "inputs unchanged" };
    const why = native === "missing" ? "native missing" : "native modified on disk";
    const entry = cached(key);
    return entry ? { kind: "restore", key, entry, reason: `cache hit (${why})` } : { kind: "compile", key, reason: why };
  }
  const why = explainChange(inp, rec);
  const entry = cached(key);
  return entry ? { kind: "restore", key, entry, reason: `cache hit (${why})` } : { kind: "compile", key, reason: why };
}
