/**
 * TickerClient: a Socket.IO connection to the ticker service that keeps itself alive. It
 * reconnects (with a fresh JWT from `getToken` each time), resubscribes every token in its mode,
 * renews the JWT with `reauth` before it expires, reports `seq` gaps, and turns every documented
 * server code into an event (docs/API.md is the contract it follows).
 */

import { io, type ManagerOptions, type Socket, type SocketOptions } from "socket.io-client";

import { Emitter } from "./emitter.js";
import { type EpochChange, type Gap, SeqTracker } from "./gaps.js";
import { expiryOf, renewalDelayMs } from "./jwt.js";
import {
  type Candle,
  type Connected,
  type ErrorCode,
  type Interval,
  type PongReply,
  type ReauthReply,
  RETRYABLE_CODES,
  type ServerError,
  type SubscribeReply,
  type UnsubscribeReply,
  type UpstreamRestored,
} from "./protocol.js";
import { type Item, Subscriptions } from "./subscriptions.js";
import type { Mode, Tick } from "./ticks.js";

export interface TickerClientOptions {
  /** The service's address, e.g. `http://127.0.0.1:5000`. */
  url: string;
  /** A current JWT; called before every (re)connect and before every `reauth`. */
  getToken: () => Promise<string> | string;
  /** Renew the JWT this many seconds before its `exp` (sooner for short-lived tokens). Default 60. */
  reauthBeforeSecs?: number;
  /** How long a request waits for the server's reply before it rejects with `timeout`. Default 10000. */
  ackTimeoutMs?: number;
  /** First delay before reconnecting after a refusal or a server-side disconnect. Default 1000. */
  retryDelayMs?: number;
  /** Longest such delay (it doubles per attempt, with jitter). Default 30000. */
  retryDelayMaxMs?: number;
  /** Connect on construction. Default true; otherwise call `connect()`. */
  autoConnect?: boolean;
  /** Passed to socket.io-client's `io()` (transports default to `["websocket"]`). */
  socketOptions?: Partial<ManagerOptions & SocketOptions>;
}

/** A server refusal on connect, with whether the client will try again. */
export interface Refusal extends ServerError {
  retrying: boolean;
}

/** Events of a TickerClient, with their payloads. Every server code is also an event of its own. */
export type TickerEvents = {
  /** Connected (the server's `connected`) and every held subscription resent. */
  connect: Connected;
  /** The connection closed; `reconnecting` says whether the client is getting it back. */
  disconnect: { reason: string; reconnecting: boolean };
  /** A frame of ticks, each in the mode its token is subscribed in. */
  ticks: Tick[];
  /** `seq` jumped within one epoch: ticks were conflated or lost. */
  gap: Gap;
  /** A token's `seq` restarted under a new epoch (the service lost its state): not a gap. */
  epoch: EpochChange;
  /** The replies to the resubscribe after a reconnect. */
  resubscribed: SubscribeReply[];
  /** A subscription the server made by itself (a renumbered instrument; `reason` says why). */
  subscribed: SubscribeReply;
  /** Tokens the server withdrew (`reason`: capacity_exhausted, not_entitled, instrument_*). */
  unsubscribed: UnsubscribeReply;
  /** The JWT was renewed on the open connection. */
  reauthed: ReauthReply;
  /** Ticks flow again for these tokens after an `upstream_unavailable`. */
  upstream_restored: UpstreamRestored;
  /** Live candles of the tokens subscribed with `candles`: first today's so far, then each change. */
  candles: Candle[];
  /** A candle builder reports again after `candles_unavailable`: candle updates resume. */
  candles_restored: Record<string, never>;
  /** The server refused the connection (`connect_error` with a code). */
  refused: Refusal;
  /** Every error the server told: `error` events, refusals, rejected tokens, failed requests. */
  error: ServerError;
} & { [C in ErrorCode]: ServerError };

/** A request the server refused or did not answer: `code` and `message` as the server sent them. */
export class TickerError extends Error implements ServerError {
  readonly code: string;
  readonly details: ServerError;

  constructor(error: ServerError) {
    super(error.message);
    this.name = "TickerError";
    this.code = error.code;
    this.details = error;
  }
}

const RESUBSCRIBE_ATTEMPTS = 5; // a busy server (server_busy, bus_unavailable) usually answers within these
const REAUTH_RETRY_MS = 5000; // a failed renewal is tried again this much later, while the old JWT lasts

export class TickerClient extends Emitter<TickerEvents> {
  /** The underlying socket.io-client socket (for what this class does not cover). */
  readonly socket: Socket;
  private readonly options: Required<Omit<TickerClientOptions, "socketOptions">>;
  private held = new Subscriptions();
  private seqs = new SeqTracker();
  private jwt: string | null = null;
  private tokenFailed = false;
  private limits: Connected["limits"] | null = null;
  private isReady = false;
  private closed = false;
  private waiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private attempts = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private reauthTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: TickerClientOptions) {
    super();
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
    if (this.options.autoConnect) this.connect();
  }

  /** Open the connection (and keep it open until `close()`). */
  connect(): void {
    this.closed = false;
    this.socket.connect();
  }

  /** Close for good: no reconnect; pending requests reject with `closed`. */
  close(): void {
    this.closed = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.reauthTimer);
    this.socket.disconnect();
    this.setReady(false);
  }

  /** Whether the connection is up and its subscriptions resent. */
  get connected(): boolean {
    return this.isReady;
  }

  /** Tokens held and their modes, as the server last confirmed them. */
  subscriptions(): Map<number, Mode> {
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
  async subscribe(items: Item[], mode: Mode = "quote", options: { candles?: Interval[] } = {}): Promise<SubscribeReply> {
    const { tokens, instruments } = split(items);
    const reply = await this.request<SubscribeReply>("subscribe", withCandles({ tokens, instruments, mode }, options.candles));
    this.record(reply, tokens, instruments);
    return reply;
  }

  /**
   * Unsubscribe tokens and/or names subscribed before. Unsubscribing the token a name resolved
   * to forgets the name too (it is not resubscribed after a reconnect). Resolves with
   * `{tokens, total}`; rejects with a TickerError as `subscribe` does.
   */
  async unsubscribe(items: Item[]): Promise<UnsubscribeReply> {
    const { tokens, instruments } = split(items);
    tokens.push(...this.held.tokensOf(instruments));
    const reply = await this.request<UnsubscribeReply>("unsubscribe", { tokens });
    this.drop(tokens);
    return reply;
  }

  /** The server's clock: `{server_time}`. */
  ping(): Promise<PongReply> {
    return this.request<PongReply>("ping", undefined);
  }

  /** Renew the JWT now (it is also done on its own before `exp`). */
  async reauth(): Promise<ReauthReply> {
    clearTimeout(this.reauthTimer);
    try {
      let token: string;
      try {
        token = await this.options.getToken();
      } catch (err) {
        this.tell({ code: "get_token_failed", message: String(err) });
        throw err;
      }
      const reply = await this.request<ReauthReply>("reauth", { token });
      this.jwt = token;
      this.emit("reauthed", reply);
      this.scheduleReauth();
      return reply;
    } catch (err) {
      if (this.isReady) this.reauthTimer = setTimeout(() => this.reauth().catch(() => undefined), REAUTH_RETRY_MS);
      throw err;
    }
  }

  // -- the socket's events --

  private listen(): void {
    const socket = this.socket;
    socket.on("connected", (hello: Connected) => this.onConnected(hello));
    socket.on("ticks", (ticks: Tick[]) => this.onTicks(ticks));
    socket.on("error", (error: ServerError) => this.onError(error));
    socket.on("upstream_restored", (event: UpstreamRestored) => this.emit("upstream_restored", event));
    socket.on("candles", (candles: Candle[]) => this.emit("candles", candles));
    socket.on("candles_restored", () => this.emit("candles_restored", {}));
    socket.on("subscribed", (reply: SubscribeReply) => this.onSubscribed(reply));
    socket.on("unsubscribed", (reply: UnsubscribeReply) => this.onUnsubscribed(reply));
    socket.on("disconnect", (reason: string) => this.onDisconnect(reason));
    socket.on("connect_error", (err: Error & { data?: ServerError }) => this.onConnectError(err));
  }

  private async onConnected(hello: Connected): Promise<void> {
    this.attempts = 0;
    this.limits = hello.limits;
    this.seqs.forget(); // a new connection starts each token from its snapshot
    this.scheduleReauth();
    const replies = await this.resubscribe();
    if (!this.socket.connected) return;
    this.setReady(true);
    if (replies.length) this.emit("resubscribed", replies);
    this.emit("connect", hello);
  }

  private onTicks(ticks: Tick[]): void {
    for (const tick of ticks) {
      const found = this.seqs.observe(tick);
      if (found && "gap" in found) this.emit("gap", found.gap);
      else if (found) this.emit("epoch", found.epoch);
    }
    this.emit("ticks", ticks);
  }

  private onError(error: ServerError): void {
    // The first `token_expired` on an open connection carries `grace_secs`: renew within it.
    if (error.code === "token_expired" && error.grace_secs !== undefined) this.reauth().catch(() => undefined);
    this.tell(error);
  }

  private onSubscribed(reply: SubscribeReply): void {
    if (reply.reason === undefined) return; // the reply to a request of ours: its promise has it
    this.held.serverSubscribed(reply);
    this.emit("subscribed", reply);
  }

  private onUnsubscribed(reply: UnsubscribeReply): void {
    if (reply.reason === undefined) return;
    if (reply.reason === "instrument_renumbered") {
      this.seqs.forget(reply.tokens);
      this.held.renumberedFrom(reply.tokens);
    } else {
      this.drop(reply.tokens);
    }
    if (reply.reason === "not_entitled") {
      this.tell({ code: "not_entitled", message: "the JWT no longer covers these instruments", tokens: reply.tokens });
    }
    this.emit("unsubscribed", reply);
  }

  private onDisconnect(reason: string): void {
    clearTimeout(this.reauthTimer);
    this.setReady(false);
    // socket.io-client reconnects by itself after a transport close (which is how the server ends
    // a connection for slow_consumer, token_expired, connection_max_age), but not after a
    // Socket.IO disconnect from the server ("io server disconnect"): that one is this client's.
    if (!this.socket.active && !this.closed) this.retryLater();
    this.emit("disconnect", { reason, reconnecting: !this.closed });
  }

  private onConnectError(err: Error & { data?: ServerError }): void {
    if (this.socket.active) return; // a transport failure: socket.io-client retries on its own
    const error: ServerError = err.data?.code ? err.data : { code: "connect_failed", message: err.message };
    const retrying = !this.closed && (this.tokenFailed || RETRYABLE_CODES.has(error.code));
    if (retrying) this.retryLater();
    else this.closed = true;
    this.emit("refused", { ...error, retrying });
    this.tell(error);
  }

  // -- helpers --

  private async freshToken(): Promise<string> {
    try {
      this.jwt = await this.options.getToken();
      this.tokenFailed = false;
      return this.jwt;
    } catch (err) {
      this.tokenFailed = true;
      this.tell({ code: "get_token_failed", message: String(err) });
      throw err;
    }
  }

  private retryLater(): void {
    const { retryDelayMs, retryDelayMaxMs } = this.options;
    const delay = Math.min(retryDelayMaxMs, retryDelayMs * 2 ** this.attempts++) * (0.5 + Math.random());
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      if (!this.closed && !this.socket.connected) this.socket.connect();
    }, delay);
  }

  private scheduleReauth(): void {
    clearTimeout(this.reauthTimer);
    const exp = this.jwt === null ? null : expiryOf(this.jwt);
    if (exp === null) return;
    const delay = renewalDelayMs(exp, Date.now(), this.options.reauthBeforeSecs);
    this.reauthTimer = setTimeout(() => this.reauth().catch(() => undefined), delay);
  }

  /** Send what was held before the connection dropped, by mode and candles, within the request limit. */
  private async resubscribe(): Promise<SubscribeReply[]> {
    const size = this.limits?.max_tokens_per_request ?? 1000;
    const replies: SubscribeReply[] = [];
    for (const { mode, candles, items } of this.held.takePlan()) {
      for (let i = 0; i < items.length; i += size) {
        const reply = await this.resubscribeOnce(items.slice(i, i + size), mode, candles);
        if (reply) replies.push(reply);
      }
    }
    return replies;
  }

  private async resubscribeOnce(items: Item[], mode: Mode, candles: Interval[]): Promise<SubscribeReply | null> {
    const { tokens, instruments } = split(items);
    for (let attempt = 0; attempt < RESUBSCRIBE_ATTEMPTS && this.socket.connected; attempt++) {
      try {
        const reply = await this.send<SubscribeReply>("subscribe", withCandles({ tokens, instruments, mode }, candles));
        this.record(reply, tokens, instruments);
        return reply;
      } catch (err) {
        if (!(err instanceof TickerError) || !RETRYABLE_CODES.has(err.code)) return null;
        await new Promise((resolve) => setTimeout(resolve, this.options.retryDelayMs * 2 ** attempt));
      }
    }
    return null;
  }

  /** Remember what the server accepted, so a reconnect can ask for it again; tell rejections. */
  private record(reply: SubscribeReply, tokens: number[], instruments: string[]): void {
    this.held.record(reply, tokens, instruments);
    for (const r of reply.rejected) {
      this.tell({ code: r.code, message: r.message, token: r.token, tokens: typeof r.token === "number" ? [r.token] : [] });
    }
  }

  /** Forget tokens no longer held, and the names that resolved to them. */
  private drop(tokens: number[]): void {
    this.seqs.forget(tokens);
    this.held.drop(tokens);
  }

  private tell(error: ServerError): void {
    this.emit("error", error);
    this.emit(error.code as ErrorCode, error);
  }

  private async request<T>(event: string, payload: unknown): Promise<T> {
    await this.whenReady();
    return this.send<T>(event, payload);
  }

  private async send<T>(event: string, payload: unknown): Promise<T> {
    let reply: T | { error: ServerError };
    try {
      const socket = this.socket.timeout(this.options.ackTimeoutMs);
      reply = payload === undefined ? await socket.emitWithAck(event) : await socket.emitWithAck(event, payload);
    } catch {
      throw new TickerError({ code: "timeout", message: `no reply to ${event} within ${this.options.ackTimeoutMs} ms` });
    }
    if (reply !== null && typeof reply === "object" && "error" in reply) throw new TickerError(reply.error);
    return reply as T;
  }

  private whenReady(): Promise<void> {
    if (this.closed) return Promise.reject(new TickerError({ code: "closed", message: "the client was closed" }));
    if (this.isReady) return Promise.resolve();
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  private setReady(ready: boolean): void {
    this.isReady = ready;
    if (!ready && !this.closed) return;
    for (const waiter of this.waiters.splice(0)) {
      if (ready) waiter.resolve();
      else waiter.reject(new TickerError({ code: "closed", message: "the client was closed" }));
    }
  }
}

function split(items: Item[]): { tokens: number[]; instruments: string[] } {
  return {
    tokens: items.filter((item): item is number => typeof item === "number"),
    instruments: items.filter((item): item is string => typeof item === "string").map((name) => name.toUpperCase()),
  };
}

/** A subscribe's payload, with `candles` when some intervals are asked for (none: no key). */
function withCandles<P extends object>(payload: P, candles: Interval[] | undefined): P & { candles?: Interval[] } {
  return candles && candles.length ? { ...payload, candles } : payload;
}
