/** @ticker/client: a Socket.IO client for the ticker market-data service. */
export { TickerClient, TickerError } from "./client.js";
export { SeqTracker } from "./gaps.js";
export { Subscriptions } from "./subscriptions.js";
export { expiryOf, renewalDelayMs } from "./jwt.js";
export { RETRYABLE_CODES } from "./protocol.js";
export { MODES } from "./ticks.js";
