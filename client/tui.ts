// `ktld status` on a terminal: a blessed screen that shows renderDashboard() and follows
// the daemon's event stream.
import blessed from "blessed";
import * as os from "node:os";
import { IpcClient } from "../src/ipc";
import type { DaemonEvent } from "../src/protocol";
import { applyEvent, DashboardModel, renderDashboard, StatusView } from "./views";

export async function runTui(c: IpcClient): Promise<number> {
  // Subscribed first, then asked: a build that ends between the two is seen as its events
  // (a status taken before the subscription could show a build that no event ever ends).
  const events: DaemonEvent[] = [];
  c.onEvent((e: DaemonEvent) => void events.push(e));
  await c.request("subscribe");
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
  const onEvent = (e: DaemonEvent) => {
    const next = applyEvent(model, e, Date.now());
    if (next === "refresh") void refresh();
    else if (next === "draw") draw();
  };
  // Events that came with or after the first status: only those of a build it did not
  // already show as ended matter, and a build-end among them leaves the view idle.
  events.splice(0).forEach(onEvent);
  c.onEvent(onEvent);
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
