// Who may stop reading a data-path socket. Two parties do, for different reasons: the connection's ReadGate (too
// many requests unanswered, too many reply bytes queued) and the server's partial-frame budget (no room to buffer the
// frame that just started). With each calling socket.pause()/resume() on its own, one would resume a socket the other
// still needs stopped; here reading stops at the first hold and resumes only once every hold is released.
//
// The frame reader (FrameReader in data-path.ts) keeps what it has read but not handed out while the socket is held:
// a chunk can carry many frames, and pausing the socket stops the next chunk, not the rest of this one. Reading
// resumes with that rest (`onOpen`), in order, before the socket gives anything new.

/** The parts of a socket the intake drives (a real Socket, or a test's stand-in). */
export interface Pausable {
  pause(): unknown;
  resume(): unknown;
}

/** Hold reasons (bits): several may be held at once. */
export const HOLD_GATE = 1;
export const HOLD_BUDGET = 2;

const intakes = new WeakMap<Pausable, Intake>();

export class Intake {
  private holds = 0;
  /**
   * Called when the last hold is released, before the socket resumes: the reader hands out the frames it kept (and
   * may hold again, e.g. when they fill the gate: then the socket stays paused).
   */
  onOpen: (() => void) | null = null;
  /** Called whenever the last hold is released (after onOpen): a stall clock restarts, time spent held not counted. */
  onRelease: (() => void) | null = null;

  private constructor(private readonly socket: Pausable) {}

  /** The socket's one intake, shared by whoever holds it. */
  static of(socket: Pausable): Intake {
    let i = intakes.get(socket);
    if (!i) {
      i = new Intake(socket);
      intakes.set(socket, i);
    }
    return i;
  }

  get held(): boolean {
    return this.holds !== 0;
  }

  hold(reason: number): void {
    if (this.holds === 0) this.socket.pause();
    this.holds |= reason;
  }

  release(reason: number): void {
    if ((this.holds & reason) === 0) return;
    this.holds &= ~reason;
    if (this.holds !== 0) return;
    this.onOpen?.();
    if (this.holds !== 0) return;
    this.onRelease?.();
    this.socket.resume();
  }
}
