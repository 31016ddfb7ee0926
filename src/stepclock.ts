// The steps of a link as they ran: each timed, each a named kill point.
import { killPoint } from "./base/killpoint";

/** One step of a link as it ran. */
export interface LinkStepTime {
  readonly name: string;
  readonly ms: number;
  /** Why it ran as it did, where ktld decided (the BTF step). */
  reason?: string;
}

/** Times the steps of a link: each awaited one (`time`), and the steps one process prints it
 * is at (`mark`: kbuild's link-vmlinux.sh says `  LD      .tmp_vmlinux1`, `  BTF ...`), each
 * lasting until the next. `onStep`: a step began (`ms` undefined) or ended. */
export class StepClock {
  readonly steps: LinkStepTime[] = [];
  private open?: { name: string; t0: number };

  constructor(private readonly onStep: (name: string, ms?: number) => void = () => {}) {}

  async time<T>(name: string, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    this.onStep(name);
    try {
      // fn's process is started by the time it first waits.
      const running = fn();
      killPoint(`link:${name}`);
      return await running;
    } finally {
      this.done(name, t0);
    }
  }

  /** The process this clock follows is now at `name` (the step it was at has ended). */
  mark(name: string): void {
    this.endMark();
    this.open = { name, t0: performance.now() };
    this.onStep(name);
    killPoint(`link:${name}`);
  }

  /** A line the followed process printed: a step when it is one (`kbuildStepOf`). */
  readonly follow = (line: string): void => {
    const name = kbuildStepOf(line);
    if (name) this.mark(name);
  };

  /** The reason of the step called `name` (its last run). */
  note(name: string, reason: string): void {
    const step = [...this.steps].reverse().find((s) => s.name === name);
    if (step) step.reason = reason;
  }

  endMark(): void {
    if (this.open) this.done(this.open.name, this.open.t0);
    this.open = undefined;
  }

  private done(name: string, t0: number): void {
    const ms = Math.round(performance.now() - t0);
    this.steps.push({ name, ms });
    this.onStep(name, ms);
  }
}

/** A line kbuild prints for a step (`  LD      .tmp_vmlinux1`): the step's name. */
export function kbuildStepOf(line: string): string | undefined {
  const m = /^ {2}([A-Z][A-Z0-9_]*(?: \[M\])?)\s+(\S.*)$/.exec(line);
  return m ? `${m[1]} ${m[2].trim()}` : undefined;
}
