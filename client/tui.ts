// `ktld status` on a terminal: a blessed screen that shows renderDashboard() and follows
// the daemon's event stream.
import blessed from "blessed";
import * as os from "node:os";
import { IpcClient } from "../src/ipc";
import type { DaemonEvent } from "../src/protocol";
import { DashboardModel, LiveBuild, renderDashboard, StatusView } from "./views";

export async function runTui(c: IpcClient): Promise<number> {
  const first = await c.request("status");
  if (!first.ok) throw new Error(first.error);
  const model: DashboardModel = { status: first.result as StatusView, selected: 0, showDetail: false, showHelp: false, jobs: os.cpus().length };
  const screen = blessed.screen({ smartCSR: true, title: "ktld status", fullUnicode: true, autoPadding: false });
  const box = blessed.box({ parent: screen, top: 0, left: 0, width: "100%", height: "100%", tags: false, wrap: false });
  const draw = () => {
    box.setContent(renderDashboard(model, screen.width as number, screen.height as number).join("\n"));
    screen.render();
  };
  const refresh = async () => {
    const r = await c.request("status");
    if (r.ok) model.status = r.result as StatusView;
    draw();
  };
  c.onEvent((e: DaemonEvent) => {
    const live: LiveBuild | undefined = model.live;
    switch (e.kind) {
      case "phase": {
        const phases = live?.id === e.build ? (live.phases ?? []) : [];
        model.live = { id: e.build, phase: e.phase, total: e.total, done: 0, running: live?.id === e.build ? live.running : new Map(), phases: [...phases, { phase: e.phase, at: Date.now() }] };
        model.status.state = "building";
        break;
      }
      case "job-start":
        if (!model.live || model.live.id !== e.build) model.live = { id: e.build, phase: e.phase, total: 0, done: 0, running: new Map() };
        model.live.running.set(e.object, { phase: e.phase, since: Date.now(), reason: e.reason });
        break;
      case "job-end":
        if (model.live?.id === e.build) {
          model.live.running.delete(e.object);
          model.live.done++;
        }
        break;
      case "boot-start":
      case "boot-end":
        void refresh();
        return;
      case "build-end":
        model.live = undefined;
        model.selected = 0;
        void refresh();
        return;
      case "state":
        model.status.state = e.state;
        break;
      case "log":
        return;
    }
    draw();
  });
  await c.request("subscribe");
  return new Promise<number>((resolve) => {
    const quit = () => {
      clearInterval(tick);
      screen.destroy();
      c.close();
      resolve(0);
    };
    c.onClose(() => {
      clearInterval(tick);
      screen.destroy();
      process.stderr.write("ktld: the daemon went away\n");
      resolve(1);
    });
    screen.key(["q", "C-c"], quit);
    screen.key(["b"], () => void c.request("build", { force: true }).then(refresh));
    screen.key(["up", "k"], () => {
      model.selected = Math.max(0, model.selected - 1);
      draw();
    });
    screen.key(["down", "j"], () => {
      model.selected = Math.min((model.status.history?.length ?? 1) - 1, model.selected + 1);
      draw();
    });
    screen.key(["enter"], () => {
      model.showDetail = !model.showDetail;
      draw();
    });
    screen.key(["l"], () => {
      if (model.console) {
        model.console = undefined;
        draw();
        return;
      }
      void c.request("log", { boot: true }).then((r) => {
        model.console = r.ok ? (r.result as string[]) : [`no boot console: ${r.error}`];
        model.consoleScroll = 0;
        draw();
      });
    });
    const page = () => Math.max(1, (screen.height as number) - 10);
    screen.key(["pageup"], () => {
      if (!model.console) return;
      model.consoleScroll = Math.min(Math.max(0, model.console.length - 1), (model.consoleScroll ?? 0) + page());
      draw();
    });
    screen.key(["pagedown"], () => {
      if (!model.console) return;
      model.consoleScroll = Math.max(0, (model.consoleScroll ?? 0) - page());
      draw();
    });
    screen.key(["?"], () => {
      model.showHelp = !model.showHelp;
      draw();
    });
    screen.on("resize", draw);
    // Elapsed times and uptime move on by themselves.
    const tick = setInterval(() => {
      model.status.uptimeMs += 1000;
      draw();
    }, 1000);
    draw();
  });
}
