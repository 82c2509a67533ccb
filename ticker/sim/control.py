"""Operator and test controls under `/_sim/` (plain JSON, no auth: the simulator is local).

- `GET  /_sim/sent?token=T`: the last (up to 500) ticks the market produced for token T, oldest
  first, as `protocol.parse_frame` returns full-mode packets: a JSON list.
- `GET  /_sim/stats`: connections per API key (`now`, `max` at once ever, `total` ever
  accepted), per slot for clients that name theirs in an `X-Ticker-Slot` header (`now`, `max`
  at once ever), tokens per connection (now and max ever), totals sent (frames, packets,
  heartbeats, error frames, raw frames), limits.
- `POST /_sim/drop[?api_key=K]`: abort every ticker connection (or K's) without a close frame.
- `POST /_sim/stall?seconds=N[&api_key=K][&pongs=1]`: open connections (or K's) get nothing for
  N seconds: no ticks, no heartbeats, no pongs (`pongs=1` keeps answering pings, the
  "socket alive, feed dead" case). The market keeps moving meanwhile.
- `POST /_sim/expire?api_key=K[&after_upgrade=1][&signal=token|bare]`: invalidate K's access
  tokens, as the morning expiry does: open connections get an error frame naming
  `TokenException` and a close 1008 with that reason, new ones get 403, `/user/profile` 403.
  `after_upgrade=1`: new connections with a dead token of K are accepted, then refused like
  the open ones (the token refused after the upgrade). `signal=bare`: the refusal is a 1008
  close with no error frame and no reason (ambiguous: only `/user/profile` tells why).
- `POST /_sim/order?api_key=K`: push an order update `{"type": "order", "data": {...}}` to K's
  connections; a JSON object body overrides fields of the generated order.
- `POST /_sim/frames?api_key=K`: push raw WebSocket frames to K's connections, in order with
  their other traffic. Body `{"frames": [F, ...]}`, each F one of `{"text": "..."}` (a text
  frame), `{"binary": "<base64>"}` (a binary frame) or `{"opcode": N, "data": "<base64>"}`
  for any frame at all; each may add `"repeat": R` (the payload R times over, for oversized
  frames), `"rsv": 0-7` and `"fin": false`. Nothing is checked: invalid UTF-8 in a text
  frame, reserved opcodes and stray continuations go out as given.
Each POST answers `{"status": "success", "data": {"connections": <how many it touched>}}`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from datetime import datetime
from typing import Any

from aiohttp import web

from ticker.sim.errors import input_error, success_response
from ticker.sim.state import SIM, Simulator
from ticker.sim.stream import RawFrame
from ticker.sim.universe import IST

routes = web.RouteTableDef()
_order_ids = itertools.count(1)
MAX_RAW_FRAME_BYTES = 16 << 20  # far beyond Kite's largest frame (3000 full packets, ~545 KiB)


def _number(request: web.Request, name: str) -> float:
    try:
        return float(request.query[name])
    except (KeyError, ValueError):
        raise input_error(f"Query parameter {name!r} must be a number.") from None


@routes.get("/_sim/sent")
async def sent(request: web.Request) -> web.Response:
    """The token's recent ticks."""
    token = int(_number(request, "token"))
    return web.json_response(request.app[SIM].hub.market.sent(token))


@routes.get("/_sim/stats")
async def stats(request: web.Request) -> web.Response:
    """Connection and traffic counters."""
    return web.json_response(request.app[SIM].hub.stats())


def _touched(count: int) -> web.Response:
    return success_response({"connections": count})


@routes.post("/_sim/drop")
async def drop(request: web.Request) -> web.Response:
    """Abort ticker connections."""
    return _touched(request.app[SIM].hub.drop(request.query.get("api_key")))


@routes.post("/_sim/stall")
async def stall(request: web.Request) -> web.Response:
    """Silence open ticker connections for a while."""
    seconds = _number(request, "seconds")
    pongs = _flag(request, "pongs")
    return _touched(request.app[SIM].hub.stall(seconds, request.query.get("api_key"), pongs))


def _flag(request: web.Request, name: str) -> bool:
    return request.query.get(name, "0") in ("1", "true", "yes")


@routes.post("/_sim/expire")
async def expire(request: web.Request) -> web.Response:
    """Expire an API key's access tokens and close its connections."""
    sim = request.app[SIM]
    signal = request.query.get("signal", "token")
    if signal not in ("token", "bare"):
        raise input_error("Query parameter 'signal' must be 'token' or 'bare'.")
    api_key = _api_key(request, sim)
    return _touched(sim.hub.expire_key(api_key, _flag(request, "after_upgrade"), signal))


@routes.post("/_sim/order")
async def order(request: web.Request) -> web.Response:
    """Push an order update to an API key's connections."""
    sim = request.app[SIM]
    api_key = _api_key(request, sim)
    try:
        overrides = await request.json() if request.can_read_body else {}
    except ValueError:
        overrides = None
    if not isinstance(overrides, dict):
        raise input_error("The body must be a JSON object of order fields.")
    data = {**sample_order(sim, api_key), **overrides}
    return _touched(sim.hub.push_text(api_key, {"type": "order", "data": data}))


@routes.post("/_sim/frames")
async def frames(request: web.Request) -> web.Response:
    """Push raw WebSocket frames to an API key's connections."""
    sim = request.app[SIM]
    api_key = _api_key(request, sim)
    try:
        body = await request.json()
        wire = [_raw_frame(spec) for spec in body["frames"]]
    except (ValueError, TypeError, KeyError, binascii.Error) as exc:
        raise input_error(f"The body must be {{\"frames\": [...]}} as /_sim/ documents: {exc}") from None
    return _touched(sim.hub.push_frames(api_key, wire))


def _raw_frame(spec: dict[str, Any]) -> RawFrame:
    """One frame of a `/_sim/frames` body (ValueError, KeyError or binascii.Error if malformed)."""
    if "text" in spec:
        opcode, payload = 0x1, spec["text"].encode()
    elif "binary" in spec:
        opcode, payload = 0x2, base64.b64decode(spec["binary"], validate=True)
    else:
        opcode, payload = int(spec["opcode"]), base64.b64decode(spec.get("data", ""), validate=True)
    repeat = int(spec.get("repeat", 1))
    if not (0 <= opcode <= 0xF and repeat >= 1 and len(payload) * repeat <= MAX_RAW_FRAME_BYTES):
        raise ValueError(f"opcode must be 0-15, repeat at least 1, the payload at most {MAX_RAW_FRAME_BYTES} bytes")
    return RawFrame.build(opcode, payload * repeat, fin=bool(spec.get("fin", True)), rsv=int(spec.get("rsv", 0)))


def _api_key(request: web.Request, sim: Simulator) -> str:
    api_key = request.query.get("api_key", "")
    sim.accounts.account(api_key)  # InputException if unknown
    return api_key


def sample_order(sim: Simulator, api_key: str) -> dict[str, Any]:
    """A completed market order in the shape of Kite's order postback."""
    user_id = sim.accounts.account(api_key).user_id
    number = next(_order_ids)
    stamp = datetime.now(IST).strftime("%Y-%m-%d %H:%M:%S")
    return {
        "account_id": user_id, "placed_by": user_id, "user_id": user_id,
        "order_id": f"2511{number:011d}", "exchange_order_id": f"1100000{number:09d}",
        "parent_order_id": None, "status": "COMPLETE", "status_message": None,
        "order_timestamp": stamp, "exchange_update_timestamp": stamp, "exchange_timestamp": stamp,
        "variety": "regular", "exchange": "NSE", "tradingsymbol": "RELIANCE",
        "instrument_token": 738561, "order_type": "MARKET", "transaction_type": "BUY",
        "validity": "DAY", "product": "CNC", "quantity": 1, "disclosed_quantity": 0, "price": 0,
        "trigger_price": 0, "average_price": 1450.0, "filled_quantity": 1, "pending_quantity": 0,
        "unfilled_quantity": 0, "cancelled_quantity": 0, "market_protection": 0, "meta": {},
        "tag": None, "guid": f"sim-{number}",
    }
