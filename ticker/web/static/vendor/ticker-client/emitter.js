/** A small typed event emitter that runs in browsers and Node alike. */
export class Emitter {
    constructor() {
        this.listeners = new Map();
    }
    /** Call `listener` on every `event`; returns a function that removes it. */
    on(event, listener) {
        let set = this.listeners.get(event);
        if (set === undefined)
            this.listeners.set(event, (set = new Set()));
        set.add(listener);
        return () => this.off(event, listener);
    }
    /** Call `listener` on the next `event` only. */
    once(event, listener) {
        const off = this.on(event, (payload) => {
            off();
            listener(payload);
        });
        return off;
    }
    off(event, listener) {
        this.listeners.get(event)?.delete(listener);
    }
    emit(event, payload) {
        for (const listener of [...(this.listeners.get(event) ?? [])]) {
            try {
                listener(payload);
            }
            catch (err) {
                // One listener's bug must not stop the others, nor the client's own bookkeeping.
                setTimeout(() => {
                    throw err;
                });
            }
        }
    }
}
