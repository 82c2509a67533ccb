"""Validation of client messages (pure logic)."""

import pytest

from ticker.web.errors import ClientError
from ticker.web.requests import parse_reauth, parse_subscribe, parse_unsubscribe


def test_defaults_to_quote_and_deduplicates():
    request = parse_subscribe({"tokens": [5, 5, 6], "instruments": ["nse:infy"]}, limit=10)
    assert (request.tokens, request.instruments, request.mode) == ([5, 6], ["NSE:INFY"], "quote")


@pytest.mark.parametrize("payload", [[1], "x", 3, {"tokens": {"a": 1}}, {"tokens": [1.5]}, {"tokens": [0]},
                                     {"tokens": [[1]]}, {"instruments": [1]}, {"instruments": ["A" * 100 + ":B"]},
                                     # Not names Kite could have: upper-casing would change them
                                     # ("ß" becomes "SS"), PostgreSQL cannot take a NUL, no exchange.
                                     {"instruments": ["ß:INFY"]}, {"instruments": ["NSE:INF\x00Y"]},
                                     {"instruments": [":INFY"]}, {"instruments": ["NSE: "]},
                                     {"instruments": ["N1:INFY"]}, {"instruments": ["NSE:IN\nFY"]}])
def test_malformed_subscribes_raise_client_errors(payload):
    with pytest.raises(ClientError) as error:
        parse_subscribe(payload, limit=10)
    assert error.value.code == "bad_request"


def test_too_many_tokens_counts_tokens_and_instruments_together():
    with pytest.raises(ClientError) as error:
        parse_subscribe({"tokens": list(range(1, 9)), "instruments": ["NSE:A", "NSE:B", "NSE:C"]}, limit=10)
    assert error.value.code == "too_many_tokens"


def test_unsubscribe_needs_a_token_list():
    assert parse_unsubscribe({"tokens": [7]}, limit=10) == [7]
    with pytest.raises(ClientError):
        parse_unsubscribe({}, limit=10)


def test_names_split_at_the_first_colon_as_kites_do():
    names = ["nse:nifty 50", "BSE:BSE SENSEX SIXTY 65:35", "NSE:M&M", "NSE:3MINDIA"]
    assert parse_subscribe({"instruments": names}, limit=10).instruments == [
        "NSE:NIFTY 50", "BSE:BSE SENSEX SIXTY 65:35", "NSE:M&M", "NSE:3MINDIA"]


@pytest.mark.parametrize("payload", ["x", [1], None, {"token": ""}, {"token": 5}])
def test_a_malformed_reauth_says_what_it_expects(payload):
    with pytest.raises(ClientError) as error:
        parse_reauth(payload)
    assert error.value.code == "bad_request" and "token" in error.value.message
