/**
 * Tick shapes, one per mode, as docs/API.md "Ticks" lists them: Kite's fields (named as
 * kiteconnect's KiteTicker names them) plus the service's `seq`, `epoch` and `ingest_ts`, and on
 * a snapshot `snapshot: true` with its `age_ms`.
 */

/** The three Kite modes, poorest first. A client never receives a mode other than it asked for. */
export type Mode = "ltp" | "quote" | "full";

export const MODES: readonly Mode[] = ["ltp", "quote", "full"];

/** Fields every tick carries whatever its mode. */
interface Stamped {
  instrument_token: number;
  /** False for indices (segment 9). */
  tradable: boolean;
  last_price: number;
  /** Per-token sequence number within `epoch`: +1 for each tick the service ingests. */
  seq: number;
  /** The run of the service's state `seq` counts in (ms since 1970); a new one restarts `seq` at 1. */
  epoch: number;
  /** When the shard parsed the tick, ms since 1970. */
  ingest_ts: number;
  /** Present (and true) on the snapshot sent right after a subscribe: the token's last known tick. */
  snapshot?: true;
  /** On a snapshot: ms since its shard ingested it, by the server's clock (it may be hours old). */
  age_ms?: number;
}

export interface Ohlc {
  open: number;
  high: number;
  low: number;
  close: number;
}

export interface DepthLevel {
  quantity: number;
  price: number;
  orders: number;
}

export interface Depth {
  /** Five levels, best first. */
  buy: DepthLevel[];
  sell: DepthLevel[];
}

export interface LtpTick extends Stamped {
  mode: "ltp";
}

/** Indices carry only `ohlc` and `change` of the quote fields; the others are then absent. */
export interface QuoteTick extends Stamped {
  mode: "quote";
  ohlc: Ohlc;
  /** Percent change from the previous close. */
  change: number;
  last_traded_quantity?: number;
  average_traded_price?: number;
  volume_traded?: number;
  total_buy_quantity?: number;
  total_sell_quantity?: number;
}

/** Indices carry only `exchange_timestamp` of the full fields; the others are then absent. */
export interface FullTick extends Omit<QuoteTick, "mode"> {
  mode: "full";
  /** ISO 8601 with the IST offset. */
  exchange_timestamp: string;
  /** ISO 8601 with the IST offset. */
  last_trade_time?: string;
  oi?: number;
  oi_day_high?: number;
  oi_day_low?: number;
  depth?: Depth;
}

/** A tick of any mode: narrow on `tick.mode`. */
export type Tick = LtpTick | QuoteTick | FullTick;

/** The tick type of a mode: `TickOf<"full">` is `FullTick`. */
export type TickOf<M extends Mode> = Extract<Tick, { mode: M }>;
