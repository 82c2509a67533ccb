/**
 * TickerClient: a Socket.IO connection to the ticker service that keeps itself alive. It
 * reconnects (with a fresh JWT from `getToken` each time), resubscribes every token in its mode,
 * renews the JWT with `reauth` before it expires, reports `seq` gaps, and turns every documented
 * server code into an event (docs/API.md is the contract it follows).
 */
import { io } from "../socket.io.esm.min.js";
import { Emitter } from "./emitter.js";
import { SeqTracker } from "./gaps.js";
import { expiryOf, renewalDelayMs } from "./jwt.js";
import { RETRYABLE_CODES, } from "./protocol.js";
import { Subscriptions } from "./subscriptions.js";
/** A request the server refused or did not answer: `code` and `message` as the server sent them. */
export class TickerError extends Error {
    constructor(error) {
        super(error.message);
        this.name = "TickerError";
        this.code = error.code;
        this.details = error;
    }
}
const RESUBSCRIBE_ATTEMPTS = 5; // a busy server (server_busy, bus_unavailable) usually answers within these
const REAUTH_RETRY_MS = 5000; // a failed renewal is tried again this much later, while the old JWT lasts
export class TickerClient extends Emitter {
    constructor(options) {
        super();
        this.held = new Subscriptions();
        this.seqs = new SeqTracker();
        this.jwt = null;
        this.tokenFailed = false;
        this.limits = null;
        this.isReady = false;
        this.closed = false;
        this.waiters = [];
        this.attempts = 0;
        this.options = {
            reauthBeforeSecs: 60, ackTimeoutMs: 10000, retryDelayMs: 1000, retryDelayMaxMs: 30000, autoConnect: true,
            ...options,
        };
        this.socket = io(options.url, {
            transports: ["websocket"],
            reconnectionDelay: this.options.retryDelayMs,
            reconnectionDelayMax: this.options.retryDelayMaxMs,
            ...options.socketOptions,
            autoConnect: false,
            auth: (send) => {
                this.freshToken().then((token) => send({ token }), () => send({}));
            },
        });
        this.listen();
        if (this.options.autoConnect)
            this.connect();
    }
    /** Open the connection (and keep it open until `close()`). */
    connect() {
        this.closed = false;
        this.socket.connect();
    }
    /** Close for good: no reconnect; pending requests reject with `closed`. */
    close() {
        this.closed = true;
        clearTimeout(this.retryTimer);
        clearTimeout(this.reauthTimer);
        this.socket.disconnect();
        this.setReady(false);
    }
    /** Whether the connection is up and its subscriptions resent. */
    get connected() {
        return this.isReady;
    }
    /** Tokens held and their modes, as the server last confirmed them. */
    subscriptions() {
        return this.held.tokens();
    }
    /**
     * Subscribe to instrument tokens and/or `EXCHANGE:TRADINGSYMBOL` names in `mode` (default
     * `quote`). Resolves with the server's reply `{tokens, mode, total, rejected}` once connected;
     * rejects with a TickerError (`bad_request`, `too_many_tokens`, `server_busy`, …, or `timeout`).
     * Each rejected token is also told as an event of its code (`not_entitled`, …). Held tokens
     * are resubscribed after every reconnect, names by name (so they follow a renumbering).
     *
     * `candles` (intervals such as `["minute"]`) also streams the items' live candles as `candles`
     * events (docs/API.md "Live candles"), kept across reconnects (today's candles come again:
     * key them by `instrument_token`, `interval`, `date`). As on the server, a subscribe sets its
     * items' intervals anew: subscribing them again without `candles` stops their candles.
     */
    async subscribe(items, mode = "quote", options = {}) {
        const { tokens, instruments } = split(items);
        const reply = await this.request("subscribe", withCandles({ tokens, instruments, mode }, options.candles));
        this.record(reply, tokens, instruments);
        return reply;
    }
    /**
     * Unsubscribe tokens and/or names subscribed before. Unsubscribing the token a name resolved
     * to forgets the name too (it is not resubscribed after a reconnect). Resolves with
     * `{tokens, total}`; rejects with a TickerError as `subscribe` does.
     */
    async unsubscribe(items) {
        const { tokens, instruments } = split(items);
        tokens.push(...this.held.tokensOf(instruments));
        const reply = await this.request("unsubscribe", { tokens });
        this.drop(tokens);
        return reply;
    }
    /** The server's clock: `{server_time}`. */
    ping() {
        return this.request("ping", undefined);
    }
    /** Renew the JWT now (it is also done on its own before `exp`). */
    async reauth() {
        clearTimeout(this.reauthTimer);
        try {
            let token;
            try {
                token = await this.options.getToken();
            }
            catch (err) {
                this.tell({ code: "get_token_failed", message: String(err) });
                throw err;
            }
            const reply = await this.request("reauth", { token });
            this.jwt = token;
            this.emit("reauthed", reply);
            this.scheduleReauth();
            return reply;
        }
        catch (err) {
            if (this.isReady)
                this.reauthTimer = setTimeout(() => this.reauth().catch(() => undefined), REAUTH_RETRY_MS);
            throw err;
        }
    }
    // -- the socket's events --
    listen() {
        const socket = this.socket;
        socket.on("connected", (hello) => this.onConnected(hello));
        socket.on("ticks", (ticks) => this.onTicks(ticks));
        socket.on("error", (error) => this.onError(error));
        socket.on("upstream_restored", (event) => this.emit("upstream_restored", event));
        socket.on("candles", (candles) => this.emit("candles", candles));
        socket.on("candles_restored", () => this.emit("candles_restored", {}));
        socket.on("subscribed", (reply) => this.onSubscribed(reply));
        socket.on("unsubscribed", (reply) => this.onUnsubscribed(reply));
        socket.on("disconnect", (reason) => this.onDisconnect(reason));
        socket.on("connect_error", (err) => this.onConnectError(err));
    }
    async onConnected(hello) {
        this.attempts = 0;
        this.limits = hello.limits;
        this.seqs.forget(); // a new connection starts each token from its snapshot
        this.scheduleReauth();
        const replies = await this.resubscribe();
        if (!this.socket.connected)
            return;
        this.setReady(true);
        if (replies.length)
            this.emit("resubscribed", replies);
        this.emit("connect", hello);
    }
    onTicks(ticks) {
        for (const tick of ticks) {
            const found = this.seqs.observe(tick);
            if (found && "gap" in found)
                this.emit("gap", found.gap);
            else if (found)
                this.emit("epoch", found.epoch);
        }
        this.emit("ticks", ticks);
    }
    onError(error) {
        // The first `token_expired` on an open connection carries `grace_secs`: renew within it.
        if (error.code === "token_expired" && error.grace_secs !== undefined)
            this.reauth().catch(() => undefined);
        this.tell(error);
    }
    onSubscribed(reply) {
        if (reply.reason === undefined)
            return; // the reply to a request of ours: its promise has it
        this.held.serverSubscribed(reply);
        this.emit("subscribed", reply);
    }
    onUnsubscribed(reply) {
        if (reply.reason === undefined)
            return;
        if (reply.reason === "instrument_renumbered") {
            this.seqs.forget(reply.tokens);
            this.held.renumberedFrom(reply.tokens);
        }
        else {
            this.drop(reply.tokens);
        }
        if (reply.reason === "not_entitled") {
            this.tell({ code: "not_entitled", message: "the JWT no longer covers these instruments", tokens: reply.tokens });
        }
        this.emit("unsubscribed", reply);
    }
    onDisconnect(reason) {
        clearTimeout(this.reauthTimer);
        this.setReady(false);
        // socket.io-client reconnects by itself after a transport close (which is how the server ends
        // a connection for slow_consumer, token_expired, connection_max_age), but not after a
        // Socket.IO disconnect from the server ("io server disconnect"): that one is this client's.
        if (!this.socket.active && !this.closed)
            this.retryLater();
        this.emit("disconnect", { reason, reconnecting: !this.closed });
    }
    onConnectError(err) {
        if (this.socket.active)
            return; // a transport failure: socket.io-client retries on its own
        const error = err.data?.code ? err.data : { code: "connect_failed", message: err.message };
        const retrying = !this.closed && (this.tokenFailed || RETRYABLE_CODES.has(error.code));
        if (retrying)
            this.retryLater();
        else
            this.closed = true;
        this.emit("refused", { ...error, retrying });
        this.tell(error);
    }
    // -- helpers --
    async freshToken() {
        try {
            this.jwt = await this.options.getToken();
            this.tokenFailed = false;
            return this.jwt;
        }
        catch (err) {
            this.tokenFailed = true;
            this.tell({ code: "get_token_failed", message: String(err) });
            throw err;
        }
    }
    retryLater() {
        const { retryDelayMs, retryDelayMaxMs } = this.options;
        const delay = Math.min(retryDelayMaxMs, retryDelayMs * 2 ** this.attempts++) * (0.5 + Math.random());
        clearTimeout(this.retryTimer);
        this.retryTimer = setTimeout(() => {
            if (!this.closed && !this.socket.connected)
                this.socket.connect();
        }, delay);
    }
    scheduleReauth() {
        clearTimeout(this.reauthTimer);
        const exp = this.jwt === null ? null : expiryOf(this.jwt);
        if (exp === null)
            return;
        const delay = renewalDelayMs(exp, Date.now(), this.options.reauthBeforeSecs);
        this.reauthTimer = setTimeout(() => this.reauth().catch(() => undefined), delay);
    }
    /** Send what was held before the connection dropped, by mode and candles, within the request limit. */
    async resubscribe() {
        const size = this.limits?.max_tokens_per_request ?? 1000;
        const replies = [];
        for (const { mode, candles, items } of this.held.takePlan()) {
            for (let i = 0; i < items.length; i += size) {
                const reply = await this.resubscribeOnce(items.slice(i, i + size), mode, candles);
                if (reply)
                    replies.push(reply);
            }
        }
        return replies;
    }
    async resubscribeOnce(items, mode, candles) {
        const { tokens, instruments } = split(items);
        for (let attempt = 0; attempt < RESUBSCRIBE_ATTEMPTS && this.socket.connected; attempt++) {
            try {
                const reply = await this.send("subscribe", withCandles({ tokens, instruments, mode }, candles));
                this.record(reply, tokens, instruments);
                return reply;
            }
            catch (err) {
                if (!(err instanceof TickerError) || !RETRYABLE_CODES.has(err.code))
                    return null;
                await new Promise((resolve) => setTimeout(resolve, this.options.retryDelayMs * 2 ** attempt));
            }
        }
        return null;
    }
    /** Remember what the server accepted, so a reconnect can ask for it again; tell rejections. */
    record(reply, tokens, instruments) {
        this.held.record(reply, tokens, instruments);
        for (const r of reply.rejected) {
            this.tell({ code: r.code, message: r.message, token: r.token, tokens: typeof r.token === "number" ? [r.token] : [] });
        }
    }
    /** Forget tokens no longer held, and the names that resolved to them. */
    drop(tokens) {
        this.seqs.forget(tokens);
        this.held.drop(tokens);
    }
    tell(error) {
        this.emit("error", error);
        this.emit(error.code, error);
    }
    async request(event, payload) {
        await this.whenReady();
        return this.send(event, payload);
    }
    async send(event, payload) {
        let reply;
        try {
            const socket = this.socket.timeout(this.options.ackTimeoutMs);
            reply = payload === undefined ? await socket.emitWithAck(event) : await socket.emitWithAck(event, payload);
        }
        catch {
            throw new TickerError({ code: "timeout", message: `no reply to ${event} within ${this.options.ackTimeoutMs} ms` });
        }
        if (reply !== null && typeof reply === "object" && "error" in reply)
            throw new TickerError(reply.error);
        return reply;
    }
    whenReady() {
        if (this.closed)
            return Promise.reject(new TickerError({ code: "closed", message: "the client was closed" }));
        if (this.isReady)
            return Promise.resolve();
        return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
    }
    setReady(ready) {
        this.isReady = ready;
        if (!ready && !this.closed)
            return;
        for (const waiter of this.waiters.splice(0)) {
            if (ready)
                waiter.resolve();
            else
                waiter.reject(new TickerError({ code: "closed", message: "the client was closed" }));
        }
    }
}
function split(items) {
    return {
        tokens: items.filter((item) => typeof item === "number"),
        instruments: items.filter((item) => typeof item === "string").map((name) => name.toUpperCase()),
    };
}
/** A subscribe's payload, with `candles` when some intervals are asked for (none: no key). */
function withCandles(payload, candles) {
    return candles && candles.length ? { ...payload, candles } : payload;
}
