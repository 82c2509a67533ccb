/** @ticker/client: a Socket.IO client for the ticker market-data service. */

export { TickerClient, TickerError } from "./client.js";
export type { Refusal, TickerClientOptions, TickerEvents } from "./client.js";
export { SeqTracker } from "./gaps.js";
export type { EpochChange, Gap, SeqEvent } from "./gaps.js";
export { Subscriptions } from "./subscriptions.js";
export type { Item, Plan } from "./subscriptions.js";
export { expiryOf, renewalDelayMs } from "./jwt.js";
export { RETRYABLE_CODES } from "./protocol.js";
export type {
  Candle,
  Interval,
  Connected, ErrorCode, Limits, PongReply, ReauthReply, Rejection, ServerError, SubscribeReply,
  UnsubscribeReply, UpstreamReason, UpstreamRestored,
} from "./protocol.js";
export { MODES } from "./ticks.js";
export type { Depth, DepthLevel, FullTick, LtpTick, Mode, Ohlc, QuoteTick, Tick, TickOf } from "./ticks.js";
