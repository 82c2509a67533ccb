"""Kite's refusal of a token in each form it takes: what each signal says, and the REST check
that settles an ambiguous one (the official KiteConnect against the simulator)."""

from __future__ import annotations

import pytest

from tests.support.processes import free_port
from ticker.config import SIM_ACCESS_TOKEN, SIM_API_KEY
from ticker.feed import rejection
from ticker.feed.rejection import Signal


@pytest.mark.parametrize(("text", "signal"), [
    ("TokenException: the access token has expired or been invalidated.", Signal.DEFINITE),
    ("Incorrect `api_key` or `access_token`.", Signal.SUSPECT),
    ("Session expired. Please login again.", Signal.SUSPECT),
    ("403 Forbidden", Signal.SUSPECT),
    ("Subscription limit of 3000 instruments per connection reached: 5 tokens ignored.", Signal.NONE),
    ("Unknown instrument tokens ignored: [1]", Signal.NONE),
    ("", Signal.NONE),
])
def test_what_an_error_frame_says_about_the_token(text, signal):
    assert rejection.from_error(text) is signal


@pytest.mark.parametrize(("code", "reason", "signal"), [
    (1008, "TokenException: the access token has expired or been invalidated.", Signal.DEFINITE),
    (1000, "TokenException", Signal.DEFINITE),
    (1008, "", Signal.SUSPECT),
    (4003, "", Signal.SUSPECT),
    (1000, "invalid session", Signal.SUSPECT),
    (1000, "", Signal.NONE),
    (1001, "going away", Signal.NONE),
    (1011, "internal error", Signal.NONE),
])
def test_what_a_close_says_about_the_token(code, reason, signal):
    assert rejection.from_close(code, reason) is signal


@pytest.mark.integration
def test_kites_profile_call_settles_an_ambiguous_signal(sim):
    assert rejection.token_refused(sim, SIM_API_KEY, SIM_ACCESS_TOKEN) is False
    assert rejection.token_refused(sim, SIM_API_KEY, "a-dead-token") is True


@pytest.mark.integration
def test_no_answer_from_kite_settles_nothing():
    nobody = f"http://127.0.0.1:{free_port()}"  # connection refused: Kite cannot be asked
    assert rejection.token_refused(nobody, SIM_API_KEY, "a-dead-token") is None
