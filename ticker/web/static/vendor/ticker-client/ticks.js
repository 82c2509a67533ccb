/**
 * Tick shapes, one per mode, as docs/API.md "Ticks" lists them: Kite's fields (named as
 * kiteconnect's KiteTicker names them) plus the service's `seq`, `epoch` and `ingest_ts`, and on
 * a snapshot `snapshot: true` with its `age_ms`.
 */
export const MODES = ["ltp", "quote", "full"];
