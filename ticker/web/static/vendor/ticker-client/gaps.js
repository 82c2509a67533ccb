/** `seq` gap detection per token (pure logic, no I/O). */
/**
 * Tracks each token's last `(epoch, seq)`. Within one epoch, `seq` grows by one per tick, so a
 * larger jump is a gap. A snapshot tick (`snapshot: true`) starts the count afresh and is never a
 * gap; a tick of a new epoch is not a gap either (it is reported as an epoch change).
 */
export class SeqTracker {
    constructor() {
        this.last = new Map();
    }
    /** Record `tick`; returns the gap or epoch change it reveals, or null. */
    observe(tick) {
        const token = tick.instrument_token;
        const before = this.last.get(token);
        this.last.set(token, { epoch: tick.epoch, seq: tick.seq });
        if (before === undefined || tick.snapshot)
            return null;
        if (tick.epoch !== before.epoch)
            return { epoch: { token, previous: before.epoch, epoch: tick.epoch } };
        if (tick.seq > before.seq + 1) {
            return { gap: { token, epoch: tick.epoch, after: before.seq, seq: tick.seq, missed: tick.seq - before.seq - 1 } };
        }
        return null;
    }
    /** Forget `tokens` (unsubscribed), or every token (a new connection starts from snapshots). */
    forget(tokens) {
        if (tokens === undefined) {
            this.last.clear();
            return;
        }
        for (const token of tokens)
            this.last.delete(token);
    }
}
