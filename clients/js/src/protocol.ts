/** The server's messages other than ticks, and its error codes (docs/API.md). */

import type { Mode } from "./ticks.js";

/** Every `{code}` the server documents, on `connect_error`, `error` events, error acks and rejections. */
export type ErrorCode =
  // connect refusals and `reauth` failures
  | "auth_required" | "token_too_large" | "token_expired" | "token_not_yet_valid" | "token_exp_required"
  | "token_invalid" | "token_wrong_audience" | "token_wrong_issuer" | "token_entitlements_invalid"
  | "auth_unavailable" | "rate_limited" | "too_many_connections" | "server_busy" | "origin_not_allowed"
  // message errors
  | "bad_request" | "too_many_tokens" | "unknown_event" | "bus_unavailable" | "database_unavailable"
  | "internal_error"
  // per-token rejections and withdrawals
  | "unknown_token" | "unknown_instrument" | "not_entitled" | "limit_exceeded" | "capacity_exhausted"
  // outages, and codes that end a connection
  | "upstream_unavailable" | "candles_unavailable" | "slow_consumer" | "connection_max_age";

/** Codes a client made no mistake to get: retrying later (with backoff) can succeed. */
export const RETRYABLE_CODES: ReadonlySet<string> = new Set([
  "auth_unavailable", "rate_limited", "too_many_connections", "server_busy", "bus_unavailable",
  "database_unavailable", "internal_error", "token_expired", "token_not_yet_valid",
  "slow_consumer", "connection_max_age",
]);

/** Why ticks stopped for some tokens (`upstream_unavailable`'s `reason`). */
export type UpstreamReason = "token_expired" | "feed_down" | "no_connection" | "bus_unavailable";

/** An `error` event, a `connect_error`'s `data`, an error ack's `error`. */
export interface ServerError {
  code: ErrorCode | string;
  message: string;
  /** With `upstream_unavailable` and `capacity_exhausted`: the tokens affected. */
  tokens?: number[];
  /** With `upstream_unavailable`. */
  reason?: UpstreamReason | string;
  /** With the first `token_expired` on an open connection: seconds left to `reauth`. */
  grace_secs?: number;
  /** With a per-token rejection: the token, or the `EXCHANGE:TRADINGSYMBOL` it was asked by. */
  token?: number | string;
}

/** One token (or `EXCHANGE:TRADINGSYMBOL`) a subscribe refused. */
export interface Rejection {
  token: number | string;
  code: "unknown_token" | "unknown_instrument" | "not_entitled" | "limit_exceeded" | "capacity_exhausted" | string;
  message: string;
}

/** Candle intervals, Kite's names (those the service builds: its `CANDLE_INTERVALS`). */
export type Interval = "second" | "minute" | "5minute" | "15minute" | "60minute";

/** A live candle (docs/API.md "Live candles"); the latest for `(instrument_token, interval, date)` wins. */
export interface Candle {
  instrument_token: number;
  interval: Interval;
  /** The candle's start, ISO 8601 in IST: `2026-11-30T10:02:00+0530`. */
  date: string;
  open: number;
  high: number;
  low: number;
  close: number;
  volume: number;
  oi: number;
  /** True once the candle is complete (final). */
  closed: boolean;
}

/** The reply to `subscribe`; also sent unasked (with `reason`) when a renumbering moves a name. */
export interface SubscribeReply {
  /** Accepted tokens (names as their tokens). */
  tokens: number[];
  mode: Mode;
  /** The candle intervals asked for, when some were. */
  candles?: Interval[];
  /** Tokens the connection now holds. */
  total: number;
  rejected: Rejection[];
  reason?: "instrument_renumbered" | string;
}

/** The reply to `unsubscribe`; also sent unasked (with `reason`) when the server withdraws tokens. */
export interface UnsubscribeReply {
  tokens: number[];
  total: number;
  reason?: "capacity_exhausted" | "not_entitled" | "instrument_renumbered" | "instrument_removed" | string;
}

export interface ReauthReply {
  user: string;
  /** Epoch seconds; null for a token without `exp`. */
  expires_at: number | null;
}

export interface PongReply {
  /** ISO 8601 with the IST offset. */
  server_time: string;
}

/** The connection's limits, sent in `connected`. */
export interface Limits {
  max_tokens_per_connection: number;
  max_tokens_per_request: number;
  max_messages_per_sec: number;
  max_connections_per_user: number;
  slow_client_secs: number;
  token_expiry_grace_secs: number;
  token_leeway_secs: number;
  max_connection_secs: number;
}

/** The server's `connected` event, after every (re)connect. */
export interface Connected {
  connection_id: string;
  user: string;
  server_time: string;
  limits: Limits;
}

export interface UpstreamRestored {
  tokens: number[];
}
