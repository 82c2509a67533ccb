"""The Kite simulator's HTTP server: one port for the ticker WebSocket, REST and `/_sim/` controls.

`python -m ticker.sim` runs it from the command line; `run(...)` is the same from Python (the
`flask sim run` command wraps it); `build_app(config)` gives the aiohttp application for tests
or embedding. Point `KiteConnect(root="http://HOST:PORT")` and
`KiteTicker(root="ws://HOST:PORT")` at it. See `stream` for the ticker's behaviour, `rest` for
the API and `control` for the operator endpoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from ticker.sim import control, rest
from ticker.sim.accounts import AccountSpec, parse_account
from ticker.sim.state import SIM, SimConfig, Simulator

log = logging.getLogger("ticker.sim")


def build_app(config: SimConfig | None = None) -> web.Application:
    """The simulator as an aiohttp application (the universe is generated here)."""
    app = web.Application(middlewares=[rest.kite_errors])
    app[SIM] = Simulator(config or SimConfig())
    app.router.add_get("/", _root)
    app.add_routes(rest.routes)
    app.add_routes(control.routes)
    app.cleanup_ctx.append(_clocks)
    app.on_shutdown.append(_close_connections)
    return app


async def _root(request: web.Request) -> web.StreamResponse:
    """The ticker WebSocket; a plain GET gets a short description of the simulator."""
    if web.WebSocketResponse().can_prepare(request).ok:
        return await request.app[SIM].hub.handle(request)
    return web.json_response(describe(request.app[SIM], f"{request.scheme}://{request.host}"))


def describe(sim: Simulator, base_url: str) -> dict[str, Any]:
    """What the simulator is and where its endpoints are (the plain `GET /` answer)."""
    ws_url = base_url.replace("http", "ws", 1)
    return {
        "simulator": "Kite Connect",
        "kite_root": base_url,
        "ticker_root": ws_url,
        "ticker_url": f"{ws_url}/?api_key=API_KEY&access_token=ACCESS_TOKEN",
        "api_keys": sim.accounts.api_keys,
        "instruments": len(sim.instruments),
        "trading_date": sim.trading_date.isoformat(),
        "config": {"seed": sim.config.seed, "tick_rate": sim.config.tick_rate,
                   "max_tokens_per_connection": sim.config.max_tokens_per_connection,
                   "max_connections_per_key": sim.config.max_connections_per_key},
        "replay": sim.replay.report() if sim.replay else None,
        "control": ["GET /_sim/sent?token=T", "GET /_sim/stats", "POST /_sim/drop[?api_key=K]",
                    "POST /_sim/stall?seconds=N[&api_key=K][&pongs=1]",
                    "POST /_sim/expire?api_key=K[&after_upgrade=1][&signal=token|bare]",
                    "POST /_sim/order?api_key=K", "POST /_sim/frames?api_key=K"],
    }


async def _clocks(app: web.Application) -> AsyncIterator[None]:
    sim = app[SIM]
    market = sim.replay.run() if sim.replay else sim.hub.run_clock()  # a recorded day, or the random walk
    tasks = [asyncio.create_task(market), asyncio.create_task(sim.hub.run_heartbeats())]
    yield
    for task in tasks:
        task.cancel()


async def _close_connections(app: web.Application) -> None:
    await app[SIM].hub.close_all()


def run(host: str = "127.0.0.1", port: int = 8765, seed: int = 1, tick_rate: float = 1.0,
        accounts: Sequence[AccountSpec | str] = (), **options: Any) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM). `accounts` are AccountSpec or
    `KEY:SECRET[:ACCESS_TOKEN]` strings (none: the default `sim_key` account); `options` are
    the other `SimConfig` fields. Port 0 picks a free port (the start line says which)."""
    config = SimConfig(seed=seed, tick_rate=tick_rate, **options)
    if accounts:
        specs = tuple(parse_account(a) if isinstance(a, str) else a for a in accounts)
        config = dataclasses.replace(config, accounts=specs)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(config, host, port))


async def serve(config: SimConfig, host: str, port: int) -> None:
    """Build, bind, log the start line, and serve until cancelled or SIGTERM/SIGINT."""
    started = time.monotonic()
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_host, bound_port = runner.addresses[0][:2]
    base = f"http://{bound_host}:{bound_port}"
    sim = app[SIM]
    market = (f"replaying {sim.replay.day} from {sim.replay.spec.directory}" if sim.replay
              else f"seed {config.seed}, {config.tick_rate} ticks/s")
    log.info("Kite simulator listening on %s (ticker ws://%s:%s/, login %s/connect/login?api_key=%s&v=3): "
             "%d instruments for %s, %s, ready in %.2fs",
             base, bound_host, bound_port, base, sim.accounts.api_keys[0], len(sim.instruments),
             sim.trading_date, market, time.monotonic() - started)
    try:
        await _until_signalled()
    finally:
        await runner.cleanup()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)  # only possible in the main thread
    await stop.wait()
