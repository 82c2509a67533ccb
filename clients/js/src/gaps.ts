/** `seq` gap detection per token (pure logic, no I/O). */

import type { Tick } from "./ticks.js";

/** Ticks of `token` with `seq` after `after` and before `seq` never arrived (conflated or lost). */
export interface Gap {
  token: number;
  epoch: number;
  /** The last `seq` seen before the jump. */
  after: number;
  /** The `seq` that arrived. */
  seq: number;
  /** How many ticks were skipped: `seq - after - 1`. */
  missed: number;
}

/** The service's state that continues `seq` was lost: `token` counts afresh from 1 under `epoch`. */
export interface EpochChange {
  token: number;
  previous: number;
  epoch: number;
}

export type SeqEvent = { gap: Gap } | { epoch: EpochChange } | null;

/**
 * Tracks each token's last `(epoch, seq)`. Within one epoch, `seq` grows by one per tick, so a
 * larger jump is a gap. A snapshot tick (`snapshot: true`) starts the count afresh and is never a
 * gap; a tick of a new epoch is not a gap either (it is reported as an epoch change).
 */
export class SeqTracker {
  private last = new Map<number, { epoch: number; seq: number }>();

  /** Record `tick`; returns the gap or epoch change it reveals, or null. */
  observe(tick: Pick<Tick, "instrument_token" | "seq" | "epoch" | "snapshot">): SeqEvent {
    const token = tick.instrument_token;
    const before = this.last.get(token);
    this.last.set(token, { epoch: tick.epoch, seq: tick.seq });
    if (before === undefined || tick.snapshot) return null;
    if (tick.epoch !== before.epoch) return { epoch: { token, previous: before.epoch, epoch: tick.epoch } };
    if (tick.seq > before.seq + 1) {
      return { gap: { token, epoch: tick.epoch, after: before.seq, seq: tick.seq, missed: tick.seq - before.seq - 1 } };
    }
    return null;
  }

  /** Forget `tokens` (unsubscribed), or every token (a new connection starts from snapshots). */
  forget(tokens?: Iterable<number>): void {
    if (tokens === undefined) {
      this.last.clear();
      return;
    }
    for (const token of tokens) this.last.delete(token);
  }
}
