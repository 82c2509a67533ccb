"""Python client for the ticker service.

- `KiteTicker`: `kiteconnect.KiteTicker`'s interface (callbacks, methods, tick dicts), for
  strategy code already written against it.
- `AsyncTicker`: `async for ticks in client.stream(tokens, mode=...)`, for new code.

Both reconnect with backoff and jitter, resubscribe every token in its mode, renew the JWT
before it expires (given a `token_provider`) and report `seq` gaps.
"""

from .aio import AsyncTicker, TickerError
from .kite import KiteTicker
from .ticks import GapTracker, to_kite

__version__ = "0.1.0"
__all__ = ["AsyncTicker", "GapTracker", "KiteTicker", "TickerError", "to_kite", "__version__"]
