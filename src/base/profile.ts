// Where a build's time goes, split the one way that matters for ktld: time in which some tool
// runs (a child started through the process runner, or a job on the pool) and ktld's own
// time (no tool running: hashing, stat walks, planning, store writes, event plumbing), the
// latter by the section of the build it fell in. `npm run bench -- --profile` prints it.
//
// One build runs at a time in a process, so the profile being taken is one module-level
// value: the process runner and the pool tell it when tools start and end, the build tells
// it which section it is in.

export interface ProfileReport {
  /** From the profile's start to its end. */
  readonly wallMs: number;
  /** Time in which at least one tool ran. */
  readonly toolMs: number;
  /** Time in which none ran: ktld's own work, and its waiting on nothing. */
  readonly ownMs: number;
  /** ktld's own time by section. */
  readonly own: Readonly<Record<string, number>>;
  /** Per tool: the time in which at least one of its kind ran. */
  readonly tools: Readonly<Record<string, number>>;
}

export class Profile {
  private readonly t0 = performance.now();
  private mark = this.t0;
  private section = "start";
  private running = 0;
  private readonly byTool = new Map<string, number>();
  private readonly own = new Map<string, number>();
  private readonly toolTime = new Map<string, number>();
  private toolMs = 0;

  /** Books the time since the last transition, then moves the mark. */
  private advance(): void {
    const now = performance.now();
    const dt = now - this.mark;
    this.mark = now;
    if (this.running === 0) {
      this.own.set(this.section, (this.own.get(this.section) ?? 0) + dt);
      return;
    }
    this.toolMs += dt;
    for (const [tool, n] of this.byTool) if (n > 0) this.toolTime.set(tool, (this.toolTime.get(tool) ?? 0) + dt);
  }

  /** The build moved on to `section`: its own time is booked there from now. */
  enter(section: string): void {
    this.advance();
    this.section = section;
  }

  toolStarted(tool: string): void {
    this.advance();
    this.running++;
    this.byTool.set(tool, (this.byTool.get(tool) ?? 0) + 1);
  }

  toolEnded(tool: string): void {
    this.advance();
    this.running = Math.max(0, this.running - 1);
    this.byTool.set(tool, Math.max(0, (this.byTool.get(tool) ?? 1) - 1));
  }

  report(): ProfileReport {
    this.advance();
    const round = (m: Map<string, number>) => Object.fromEntries([...m].filter(([, v]) => v >= 0.5).map(([k, v]) => [k, Math.round(v)]));
    const wallMs = Math.round(this.mark - this.t0);
    const toolMs = Math.round(this.toolMs);
    return { wallMs, toolMs, ownMs: wallMs - toolMs, own: round(this.own), tools: round(this.toolTime) };
  }
}

let active: Profile | undefined;

/** Starts taking a profile (the previous one, if any, is dropped). */
export function startProfile(): Profile {
  active = new Profile();
  return active;
}

/** Ends the profile being taken and returns its figures. */
export function endProfile(p: Profile): ProfileReport {
  if (active === p) active = undefined;
  return p.report();
}

/** The build is now in `section` (no-op when no profile is being taken). */
export function section(name: string): void {
  active?.enter(name);
}

/** Brackets one tool run for the profile being taken. */
export function toolRun(tool: string): () => void {
  const p = active;
  if (!p) return () => {};
  p.toolStarted(tool);
  let ended = false;
  return () => {
    if (ended) return;
    ended = true;
    p.toolEnded(tool);
  };
}
