"""A real simulator process for the tests in tests/sim (started once, stopped by PID at the end)."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass

import pytest
import requests

from tests.support.processes import Process, wait_for

TICK_RATE = 5.0  # fast enough for several ticks per scenario phase
# One account per scenario, so limits and expiries in one test cannot disturb another.
ACCOUNTS = {
    "sim_key": ("sim_secret", "sim_access_token"),
    "k_ticker": ("s_ticker", "t_ticker"),
    "k_bad": ("s_bad", "t_bad"),
    "k_limits": ("s_limits", "t_limits"),
    "k_tokens": ("s_tokens", "t_tokens"),
    "k_misc": ("s_misc", "t_misc"),
    "k_drop": ("s_drop", "t_drop"),
    "k_stall": ("s_stall", "t_stall"),
    "k_expire": ("s_expire", "t_expire"),
    "k_frames": ("s_frames", "t_frames"),
    "k_upgrade": ("s_upgrade", "t_upgrade"),
    "k_bare": ("s_bare", "t_bare"),
    "k_slots": ("s_slots", "t_slots"),
}


@dataclass
class KiteSim:
    """Where the running simulator is."""

    base_url: str
    ws_url: str

    def ticker_url(self, api_key: str, access_token: str | None = None) -> str:
        """The URL KiteTicker opens for this key (with its configured token by default)."""
        token = ACCOUNTS[api_key][1] if access_token is None else access_token
        return f"{self.ws_url}?api_key={api_key}&access_token={token}"

    def get(self, path: str, **params) -> requests.Response:
        return requests.get(self.base_url + path, params=params, timeout=10)

    def post(self, path: str, **params) -> requests.Response:
        return requests.post(self.base_url + path, params=params, timeout=10)

    def post_json(self, path: str, body, **params) -> requests.Response:
        return requests.post(self.base_url + path, params=params, json=body, timeout=10)


@pytest.fixture(scope="session")
def kite_sim(tmp_path_factory):
    """`python -m ticker.sim` on a free port (port 0: it logs the one it got), one account per scenario."""
    accounts = [f"--account={key}:{secret}:{token}" for key, (secret, token) in ACCOUNTS.items()]
    argv = [sys.executable, "-m", "ticker.sim", "--host", "127.0.0.1", "--port", "0",
            "--seed", "1", "--tick-rate", str(TICK_RATE), *accounts]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = Process("kite-sim", argv, env, tmp_path_factory.mktemp("kite-sim"))
    try:
        port = wait_for(lambda: _bound_port(process), 15, "the simulator's start line")
        yield KiteSim(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}")
    finally:
        process.stop()


def _bound_port(process: Process) -> int | None:
    if not process.alive():
        raise AssertionError(f"the simulator exited:\n{process.output()[-3000:]}")
    match = re.search(r"listening on http://[\d.]+:(\d+)", process.output())
    return int(match.group(1)) if match else None
