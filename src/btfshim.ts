// The PAHOLE ktld gives kbuild's link-vmlinux.sh (see src/btf.ts): for `-J FLAGS IMAGE`, the
// last .BTF put into IMAGE (`$LLVM_OBJCOPY --add-section .BTF=FILE IMAGE`, as pahole 1.24's
// btf_encoder__write_elf adds it to an image without one) when planBtf says the encoding
// would be the same; else the real pahole, as kbuild runs it. It says what it did in the plan's result
// file. Any other call, or a plan it cannot read, is the real pahole's.
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import { BTF_KEPT, BtfInput, BtfOutcome, BtfPlanFile, BtfRecord, btfSymbolsKey, knownSbtf, OBJTOOL_PREFIX, paholeKey, pickBtf, supersetBtf } from "./btf";
import { hashBytes, hashFile } from "./base/hash";
import { elfHasSection, elfSection } from "./elf";

let ranReal = false;

function realPahole(real: string, args: readonly string[]): number {
  ranReal = true;
  const r = spawnSync(real, args, { stdio: "inherit", timeout: 30 * 60_000, killSignal: "SIGKILL" });
  if (r.error) {
    process.stderr.write(`ktld's pahole: ${real}: ${r.error.message}\n`);
    return 127;
  }
  return r.status ?? 1;
}

function say(plan: BtfPlanFile, outcome: BtfOutcome): void {
  fs.writeFileSync(plan.result, JSON.stringify(outcome));
}

async function main(argv: readonly string[]): Promise<number> {
  const args = argv;
  const planFile = process.env.KTLD_BTF_PLAN;
  let plan: BtfPlanFile | undefined;
  try {
    plan = planFile ? (JSON.parse(fs.readFileSync(planFile, "utf8")) as BtfPlanFile) : undefined;
  } catch {
    plan = undefined;
  }
  const image = args[args.length - 1];
  if (!plan || args[0] !== "-J" || args.length < 2 || image.startsWith("-")) return realPahole(plan?.real ?? "pahole", args);
  const flags = args.slice(1, -1);
  const objcopy = process.env.LLVM_OBJCOPY || "llvm-objcopy";
  const tools = { ...plan.tools, objcopy, flags };
  const pahole = paholeKey(plan.tools.pahole, flags);
  // What the records know of superset BTF, by bytes (every record, also a pahole-ahead one).
  const known = knownSbtf(plan.records);
  // The objects link-vmlinux.sh links beside vmlinux.o, looked at here (they are made after
  // ktld wrote the plan): each with its superset BTF, always (they are small).
  const extra: BtfInput[] = [];
  for (const rel of plan.extra) {
    const file = path.join(plan.buildDir, rel);
    const hash = hashFile(file);
    if (hash === null) continue;
    // Unchanged since a record: its superset BTF is the record's (not computed again).
    const sbtf = known.get(hash) ?? await supersetBtf(file, tools, plan.btfDir).catch(() => undefined);
    extra.push({ path: rel, hash, ...(sbtf ? { sbtf } : {}) });
  }
  const inputs = [...plan.inputs, ...extra];
  const key = (leaveOut?: string) => {
    try {
      return btfSymbolsKey(image, leaveOut);
    } catch (e) {
      return `unreadable: ${(e as Error).message}`;
    }
  };
  const symbols = key();
  const records = plan.records;
  const now = { pahole, inputs, symbols, ...(records.some((r) => r.leaveOut === OBJTOOL_PREFIX) ? { symbolsLeavingOut: key(OBJTOOL_PREFIX) } : {}) };
  // This link's record: what is known of each object's superset BTF, now's, else a record's
  // for the same bytes; then the kept ones, up to BTF_KEPT.
  const recordsWith = (btf: string): BtfRecord[] => {
    const mine: BtfRecord = {
      pahole, symbols, btf,
      inputs: inputs.map((i) => {
        const sbtf = i.sbtf ?? known.get(i.hash);
        return { path: i.path, hash: i.hash, ...(sbtf ? { sbtf } : {}) };
      }),
    };
    // One record per state of the objects (two states may have the same .BTF).
    const state = (r: BtfRecord) => `${r.symbols} ${r.inputs.map((i) => i.hash).join(" ")}`;
    // A record of pahole run ahead is for its link only.
    return [mine, ...records.filter((r) => r.leaveOut === undefined && state(r) !== state(mine))].slice(0, BTF_KEPT);
  };
  // A kept .BTF first; else one pahole made ahead of objtool for this link (src/btfahead.ts).
  const kept = records.filter((r) => r.leaveOut === undefined);
  const aheadRecords = records.filter((r) => r.leaveOut !== undefined);
  const pick = pickBtf(kept, now);
  const aheadPick = pick.index < 0 && aheadRecords.length ? pickBtf(aheadRecords, now) : undefined;
  const chosen = pick.index >= 0 ? kept[pick.index] : aheadPick && aheadPick.index >= 0 ? aheadRecords[aheadPick.index] : undefined;
  const blob = chosen ? path.join(plan.btfDir, chosen.btf) : undefined;
  if (chosen && blob && hashFile(blob) === chosen.btf) {
    // As pahole adds it to an image without a .BTF section. (This image has the linker
    // script's empty one, which pahole rewrites through libelf, laying the whole file out
    // again: so .tmp_vmlinux1 and the .btf.o cut from it differ from kbuild's in layout,
    // while the .BTF bytes and the vmlinux linked from them are kbuild's: test/devtree.test.ts.)
    const r = spawnSync(objcopy, ["--add-section", `.BTF=${blob}`, image], { stdio: "inherit", timeout: 10 * 60_000, killSignal: "SIGKILL" });
    if (r.status === 0) {
      const stripped = plan.firstLink && !elfHasSection(image, ".debug_info") ? `; ${image} linked without debug info` : "";
      const ahead = chosen.leaveOut !== undefined;
      const reason = ahead ? `${pick.reason}; ${aheadPick!.reason}` : pick.reason;
      say(plan, { reused: !ahead, ...(ahead ? { ahead } : {}), reason: `${reason}${stripped}`, records: recordsWith(chosen.btf) });
      return 0;
    }
    process.stderr.write(`ktld's pahole: ${objcopy} could not put the .BTF in place; running pahole\n`);
  }
  let reason = chosen ? "the kept .BTF is missing or damaged" : `${pick.reason}${aheadPick ? `; pahole ran ahead of objtool, but ${aheadPick.reason}` : ""}`;
  // ktld's LD linked the image without debug info, expecting the reuse: pahole reads the
  // DWARF, so the image is linked again as link-vmlinux.sh asked.
  if (plan.firstLink && !elfHasSection(image, ".debug_info")) {
    const saved = fs.existsSync(plan.firstLink.args) ? fs.readFileSync(plan.firstLink.args, "utf8").split("\n").filter(Boolean) : [];
    if (!saved.length) {
      process.stderr.write(`ktld's pahole: ${image} has no debug info and ktld kept no arguments of its link\n`);
      say(plan, { reused: false, reason });
      return 1;
    }
    const relink = spawnSync(plan.firstLink.real, saved, { stdio: "inherit", timeout: 30 * 60_000, killSignal: "SIGKILL" });
    if (relink.status !== 0) {
      say(plan, { reused: false, reason });
      return relink.status ?? 1;
    }
    reason += `; ${image} linked again with its debug info for pahole`;
  }
  const code = realPahole(plan.real, args);
  if (code !== 0) {
    say(plan, { reused: false, reason });
    return code;
  }
  const bytes = elfSection(image, ".BTF");
  if (!bytes) {
    say(plan, { reused: false, reason });
    return 0;
  }
  const btf = hashBytes(bytes);
  fs.mkdirSync(plan.btfDir, { recursive: true });
  const tmp = path.join(plan.btfDir, `${btf}.tmp-${process.pid}`);
  fs.writeFileSync(tmp, bytes);
  fs.renameSync(tmp, path.join(plan.btfDir, btf));
  const next = recordsWith(btf);
  // The .BTF of the kept records stay; older ones go.
  const keep = new Set(next.map((r) => r.btf));
  for (const f of fs.readdirSync(plan.btfDir)) if (!keep.has(f) && /^[0-9a-f]{64}$/.test(f)) fs.rmSync(path.join(plan.btfDir, f), { force: true });
  say(plan, { reused: false, reason, records: next });
  return 0;
}

const args = process.argv.slice(2);
main(args).then((code) => process.exit(code), (e: unknown) => {
  process.stderr.write(`ktld's pahole: ${(e as Error).message}\n`);
  // Never a failed link for ktld's sake: kbuild's pahole, unless it already ran.
  if (ranReal) process.exit(1);
  let real = "pahole";
  try {
    real = (JSON.parse(fs.readFileSync(process.env.KTLD_BTF_PLAN ?? "", "utf8")) as BtfPlanFile).real;
  } catch {
    // no plan: the pahole on PATH
  }
  process.exit(realPahole(real, args));
});
