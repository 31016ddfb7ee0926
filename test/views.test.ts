// Snapshot tests of the view models (pure functions from state to text) at several sizes.
// KTLD_UPDATE_SNAPSHOTS=1 rewrites the files under test/snapshots/.
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { test } from "node:test";
import { kernelModuleJson, reportJson, statusJson, thinLinkJson } from "./wire";
import { applyEvent, bootLines, DashboardModel, detailLines, HistoryView, progressBar, renderDashboard, statusText, StatusView } from "../client/views";

const SNAPSHOTS = path.resolve(__dirname, "../../test/snapshots");
const NOW = Date.UTC(2026, 10, 25, 12, 0, 0);

function history(): HistoryView[] {
  return [
    {
      id: 7, startedAt: NOW - 20_000, trigger: ["kernel/fork.c"], ok: false,
      report: reportJson({
        ok: false, error: "FE failed", diagnostics: "kernel/fork.o: compile failed\nkernel/fork.c:597:2: error: use of undeclared identifier 'this'\n  597 | \tthis is not C;\n      | \t^\n1 error generated.",
        frontend: { compiled: 1, ms: 940 }, thinlink: { ms: 0 }, backend: { modules: 0, compiled: 0, cacheHits: 0, unchanged: 0, ms: 0, jobs: [] },
        link: { ms: 0, skipped: false }, ms: 941, frontendJobs: [{ object: "kernel/fork.o", reason: "source kernel/fork.c changed", changed: false }], kbuild: [],
      }),
    },
    {
      id: 6, startedAt: NOW - 60_000, trigger: ["include/linux/statfs.h"], ok: true,
      report: reportJson({
        ok: true, frontend: { compiled: 3, ms: 2100 }, thinlink: { ms: 510, indexChanged: 2 },
        backend: { modules: 513, compiled: 1, cacheHits: 1, unchanged: 511, ms: 900, jobs: [
          { object: "fs/statfs.o", action: "compile", reason: "bitcode changed; index changed", ms: 310 },
          { object: "fs/open.o", action: "restore", reason: "cache hit (index changed: imports fs/statfs.o)" },
        ] },
        link: { ms: 1800, skipped: false }, ms: 5400,
        frontendJobs: [
          { object: "fs/statfs.o", reason: "header include/linux/statfs.h changed", changed: true },
          { object: "fs/open.o", reason: "header include/linux/statfs.h changed", changed: false },
          { object: "kernel/sys.o", reason: "header include/linux/statfs.h changed", changed: false },
        ],
        kbuild: [],
      }),
    },
    {
      id: 5, startedAt: NOW - 120_000, trigger: ["kernel/fork.c"], ok: true,
      report: reportJson({
        ok: true, frontend: { compiled: 1, ms: 1400 }, thinlink: { ms: 530, indexChanged: 12 },
        backend: { modules: 513, compiled: 12, cacheHits: 0, unchanged: 501, ms: 2300, jobs: [
          { object: "kernel/fork.o", action: "compile", reason: "bitcode changed; index changed", ms: 500 },
          { object: "kernel/exit.o", action: "compile", reason: "index changed: imports kernel/fork.o", ms: 380 },
        ] },
        link: { ms: 2100, skipped: false }, ms: 6400,
        frontendJobs: [{ object: "kernel/fork.o", reason: "source kernel/fork.c changed", changed: true }], kbuild: [],
      }),
    },
  ];
}

function status(): StatusView {
  return statusJson({
    buildDir: "/home/dev/linux/out", pid: 4242, state: "failed", stale: true, degraded: null, uptimeMs: 3_725_000,
    modules: 513, clang: "Debian clang version 19.1.7 (3~deb12u1)", config: { arch: "ARCH=x86_64", distMode: false },
    current: null, pending: 0, history: history(), cache: { entries: 540, bytes: 7_340_032 },
  });
}

function model(over: Partial<DashboardModel> = {}): DashboardModel {
  return { status: status(), selected: 1, showDetail: true, showHelp: false, jobs: 2, ...over };
}

function snapshot(name: string, text: string): void {
  const file = path.join(SNAPSHOTS, `${name}.txt`);
  if (process.env.KTLD_UPDATE_SNAPSHOTS === "1") {
    fs.mkdirSync(SNAPSHOTS, { recursive: true });
    fs.writeFileSync(file, text);
  }
  assert.ok(fs.existsSync(file), `no snapshot ${file}: run with KTLD_UPDATE_SNAPSHOTS=1 and review it`);
  assert.equal(text, fs.readFileSync(file, "utf8"), `snapshot ${name} differs`);
}

for (const [w, h] of [[120, 40], [80, 24], [60, 16], [40, 10]] as const) {
  test(`dashboard at ${w}x${h}: fits, selects, explains, shows diagnostics`, () => {
    const lines = renderDashboard(model(), w, h, NOW);
    assert.ok(lines.length <= h, `${lines.length} lines for a height of ${h}`);
    for (const l of lines) assert.ok(l.length <= w, `line over ${w} columns: ${l}`);
    snapshot(`dashboard-${w}x${h}`, lines.join("\n") + "\n");
    if (h >= 24) {
      const text = lines.join("\n");
      assert.match(text, /> #6 /, "the selected build is marked");
      assert.match(text, /FE fs\/open\.o: header include\/linux\/statfs\.h changed/);
      assert.match(text, /kernel\/fork\.c:597:2: error/);
      assert.match(text, /hit rate 7%/);
    }
  });
}

test("dashboard with a build in progress: phase, [n/N], running jobs, ETA", () => {
  const running = new Map([["kernel/exit.o", { phase: "BE", since: NOW - 1500, reason: "index changed: imports kernel/fork.o" }]]);
  const lines = renderDashboard(model({ live: { id: 8, phase: "BE", total: 12, done: 5, running }, showDetail: false }), 100, 30, NOW);
  const text = lines.join("\n");
  assert.match(text, /build #8  BE\s+\[5\/12\]  ETA \d+\.\ds/);
  assert.match(text, /BE kernel\/exit\.o \(1\.5s\): index changed: imports kernel\/fork\.o/);
  snapshot("dashboard-building-100x30", text + "\n");
});

test("kernel modules: the header counts them and names the ones left to kbuild; a module build shows in the history row and in why, with its BE jobs", () => {
  const moduleBuild: HistoryView = {
    id: 8, startedAt: NOW - 5_000, trigger: ["fs/ext4/inode.c"], ok: true,
    report: reportJson({
      ok: true, frontend: { compiled: 1, ms: 1200 }, thinlink: { ms: 0 }, backend: { modules: 0, compiled: 0, cacheHits: 0, unchanged: 0, ms: 0, jobs: [] },
      link: { ms: 0, skipped: true }, ms: 4000, frontendJobs: [{ object: "fs/ext4/inode.o", reason: "source fs/ext4/inode.c changed", changed: true }], kbuild: [],
      kernelModules: [kernelModuleJson({
        name: "ext4", ko: "fs/ext4/ext4.ko", reason: "fs/ext4/inode.o changed", thinlink: { ms: 60, skipped: false }, link: { ms: 130, skipped: false },
        backend: { compiled: 2, cacheHits: 0, unchanged: 31, ms: 1900, jobs: [
          { object: "fs/ext4/inode.o", action: "compile", reason: "bitcode changed; index changed" },
          { object: "fs/ext4/file.o", action: "compile", reason: "index changed: imports fs/ext4/inode.o" },
        ] },
      })],
    }),
  };
  const st: StatusView = { ...status(), kernelModules: { built: 9, leftToKbuild: ["vboxdrv.ko: a member has no .cmd record; left to kbuild (make modules)"] }, history: [moduleBuild, ...history()] };
  const text = statusText(st, 140);
  assert.match(text, /513 bitcode units, 9 kernel modules/);
  assert.match(text, /! vboxdrv\.ko: a member has no \.cmd record; left to kbuild \(make modules\)/);
  assert.match(text, /#8 .* ko ext4\(BE 2\/0\)/);
  const why = detailLines(moduleBuild, 140).join("\n");
  assert.match(why, /module fs\/ext4\/ext4\.ko \(fs\/ext4\/inode\.o changed\): thin-link 0\.1s {2}BE 2 run\/0 cached 1\.9s {2}link 0\.1s/);
  assert.match(why, /BE fs\/ext4\/file\.o: index changed: imports fs\/ext4\/inode\.o/);
  assert.doesNotMatch(why, /no job ran/);
  // With the steps' decisions in the report (src/steps.ts), why says them.
  const withReasons: HistoryView = { ...moduleBuild, report: { ...moduleBuild.report, thinlink: thinLinkJson({ ms: 0, reason: "every object as the last thin-link read it" }),
    kernelModules: [{ ...moduleBuild.report.kernelModules[0], thinlink: thinLinkJson({ ms: 60, skipped: false, reason: "an object it reads changed" }), link: { ms: 130, skipped: false, reason: "an input or its command changed" } }] } };
  const why2 = detailLines(withReasons, 160).join("\n");
  assert.match(why2, /^ {2}thin-link: every object as the last thin-link read it$/m);
  assert.match(why2, /^ {4}thin-link: an object it reads changed; link: an input or its command changed$/m);
  assert.doesNotMatch(why, /thin-link: /);
});

test("progress bar", () => {
  assert.equal(progressBar(0, 4, 6), "[----]");
  assert.equal(progressBar(2, 4, 6), "[##--]");
  assert.equal(progressBar(9, 4, 6), "[####]");
  assert.equal(progressBar(0, 0, 4), "[--]");
});

test("plain status snapshot (stdout not a terminal)", () => {
  snapshot("status-plain-100", statusText(status(), 100));
});

test("changes ktld does not act on (a kernel module's source) are shown with what to run", () => {
  const st = { ...status(), notHandled: ["../drivers/block/loop.c changed (used by loop.ko, which ktld leaves to kbuild): run make modules"] };
  const text = statusText(st, 120);
  assert.match(text, /! \.\.\/drivers\/block\/loop\.c changed \(used by loop\.ko, which ktld leaves to kbuild\): run make modules/);
  const screen = renderDashboard({ status: st, selected: 0, showDetail: false, showHelp: false, jobs: 2 }, 120, 30).join("\n");
  assert.match(screen, /which ktld leaves to kbuild\): run make modules/);
});

test("boot panel: says whose kernel a verdict is, and 'waiting' while a build is making the kernel to boot", () => {
  const last = { build: 6, ok: false, verdict: "cancelled", detail: "cancelled by a newer build", ms: 120, accel: "tcg", log: [] };
  const st = (boot: StatusView["boot"]) => ({ ...status(), boot });
  const waiting = bootLines(st({ running: null, waiting: { build: 7, why: "build #7 is making a new kernel" }, last, run: "check.sh" }), 100, 4);
  assert.equal(waiting[0], "boot of build #7's kernel: waiting (build #7 is making a new kernel)");
  assert.match(waiting[1], /^last boot of build #6: CANCELLED/);
  const running = bootLines(st({ running: 7, waiting: null, last, run: "check.sh" }), 100, 4);
  assert.equal(running[0], "boot of build #7's kernel: running (check.sh)");
  assert.deepEqual(bootLines(st({ running: null, waiting: null, last: null, run: null }), 100, 4), ["boot: none yet (each fresh kernel is booted)"]);
  // A daemon of before (no `waiting` field) still reads.
  const before = { running: null, last: { ...last, verdict: "pass", detail: "the script exited 0" }, run: null } as unknown as StatusView["boot"];
  assert.match(bootLines(st(before), 100, 4)[0], /^boot of build #6: PASS/);
});

test("the live view follows the event stream: a build the first status showed in progress ends when its build-end comes", () => {
  // The TUI's first status was taken while build #3 was scanning; the events that follow
  // are those of a build that found nothing to do.
  const m = model({ status: { ...status(), state: "building", stale: false, current: { id: 3, phase: "scan" } }, showDetail: false });
  assert.match(renderDashboard(m, 100, 30, NOW).join("\n"), /build #3/, "the status's build in progress is shown before any event");
  assert.equal(applyEvent(m, { kind: "phase", build: 3, phase: "BE", total: 0 }, NOW), "draw");
  assert.match(renderDashboard(m, 100, 30, NOW).join("\n"), /build #3  BE/);
  assert.equal(applyEvent(m, { kind: "build-end", build: 3, ok: true, noop: true, summary: reportJson() }, NOW), "refresh");
  assert.equal(applyEvent(m, { kind: "state", state: "idle" }, NOW), "draw");
  const text = renderDashboard(m, 100, 30, NOW).join("\n");
  assert.doesNotMatch(text, /build #3/, "the ended build is still shown as running");
  assert.match(text, /state: idle/);
  // A build-end of another build leaves the one in progress alone.
  const other = model({ status: { ...status(), state: "building", current: { id: 5, phase: "FE" } } });
  applyEvent(other, { kind: "build-end", build: 4, ok: true, summary: reportJson() }, NOW);
  assert.match(renderDashboard(other, 100, 30, NOW).join("\n"), /build #5/);
});

test("the link in the live view is its steps: done ones with their time, the running one so far, the rest with the last link's time", () => {
  const last: HistoryView = {
    id: 6, startedAt: NOW - 60_000, trigger: ["kernel/fork.c"], ok: true,
    report: reportJson({ link: { ms: 17_000, steps: [{ name: "LD vmlinux.o", ms: 900 }, { name: "OBJTOOL vmlinux.o", ms: 1600 }, { name: "BTF .btf.vmlinux.bin.o", ms: 13_000 }] } }),
  };
  const m = model({ status: { ...status(), state: "building", history: [last] }, showDetail: false });
  applyEvent(m, { kind: "phase", build: 7, phase: "link", total: 1 }, NOW - 3000);
  applyEvent(m, { kind: "link-step", build: 7, target: "vmlinux", step: "LD vmlinux.o" }, NOW - 3000);
  applyEvent(m, { kind: "link-step", build: 7, target: "vmlinux", step: "LD vmlinux.o", ms: 1000 }, NOW - 2000);
  applyEvent(m, { kind: "link-step", build: 7, target: "vmlinux", step: "OBJTOOL vmlinux.o" }, NOW - 2000);
  // Another build's step is not this one's.
  assert.equal(applyEvent(m, { kind: "link-step", build: 5, target: "vmlinux", step: "LD vmlinux" }, NOW), "none");
  const text = renderDashboard(m, 140, 30, NOW).join("\n");
  assert.match(text, /link: LD vmlinux\.o 1\.0s > OBJTOOL vmlinux\.o 2\.0s… > BTF \.btf\.vmlinux\.bin\.o \(last 13\.0s\)/);
  assert.doesNotMatch(text, /\[0\/1\]\n\s*\[-/, "a bar for the link");
});

test("the shared cache in status: where, how, what it gave, and why it is unused when it is", () => {
  const none = statusText(statusJson(), 200);
  assert.doesNotMatch(none, /shared/);
  const up = statusText(statusJson({ sharedCache: { url: "redis://10.0.0.5:6379", write: false, hits: 412, misses: 3, rejected: 2, stored: 0 } }), 200);
  assert.match(up, /shared redis:\/\/10\.0\.0\.5:6379 \(read-only\): 412 hits, 3 misses, 2 refused$/m);
  const down = statusText(statusJson({ sharedCache: { url: "redis://ci:6379", write: true, down: "connect ECONNREFUSED 127.0.0.1:6379", hits: 0, misses: 0, rejected: 0, stored: 9 } }), 200);
  assert.match(down, /shared redis:\/\/ci:6379 \(read-write\): 0 hits, 0 misses, 9 stored; not usable now: connect ECONNREFUSED/);
});
