"""Candles: OHLCV bars built live from the tick bus (README, "Candles").

`build` is the pure fold of ticks into candles (no I/O); `store` keeps today's candles in
Redis and completed ones in PostgreSQL; `builder` is the long-running process between the bus
and those stores.
"""
