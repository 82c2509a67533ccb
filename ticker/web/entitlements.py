"""Market-data entitlements: which exchanges' data a connection may receive, from its JWT.

Exchanges license their data per segment, and a platform that redistributes it must keep users
who have not signed for a segment from receiving it. The JWT says which, in one claim (named by
`JWT_ENTITLEMENTS_CLAIM`, default `exchanges`): a list of Kite exchange codes as the
instruments dump's `exchange` column spells them (NSE, BSE, NFO, BFO, CDS, BCD, MCX, NCO, ...;
https://kite.trade/docs/connect/v3/market-quotes/#instruments). No claim: every exchange (as
before entitlements existed). An empty list: nothing. `admin: true`: every exchange. Codes
match exactly (Kite's are upper case). Pure logic, no I/O; the exchange of a token comes from
the registry (ticker.registry.instruments.Registry.exchanges).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ticker.web import errors
from ticker.web.errors import ClientError

# Kite's exchange codes (the dump's `exchange` column, and kiteconnect's EXCHANGE_* constants):
# the metric's `exchange` label takes one of these or "other", so it stays bounded whatever a
# registry holds.
KITE_EXCHANGES = frozenset({"NSE", "BSE", "NFO", "BFO", "CDS", "BCD", "MCX", "NCO", "NSEIX", "GLOBAL"})


@dataclass(frozen=True)
class Entitlements:
    """The exchanges a connection may receive; `exchanges` None means every one."""

    exchanges: frozenset[str] | None = None

    @property
    def restricted(self) -> bool:
        return self.exchanges is not None

    def allows(self, exchange: str) -> bool:
        """Whether data of `exchange` (a Kite exchange code) may reach this connection."""
        return self.exchanges is None or exchange in self.exchanges


EVERYTHING = Entitlements()


def entitlements_from(claims: dict[str, Any], claim: str) -> Entitlements:
    """The entitlements a verified token's `claims` grant, `claim` naming the list of exchange
    codes. Raises ClientError `token_entitlements_invalid` when that claim is present but not a
    list of upper-case codes (a token minted wrong is refused, never taken for "everything" or
    quietly for "nothing")."""
    if claims.get("admin") is True or claim not in claims:
        return EVERYTHING
    value = claims[claim]
    if not isinstance(value, list) or not all(_is_code(code) for code in value):
        # "nse" or "NSE " would match nothing, silently: refused, as a token minted wrong.
        raise ClientError(errors.TOKEN_ENTITLEMENTS_INVALID,
                          f"the token's {claim!r} claim must be a list of Kite exchange codes (upper-case letters), "
                          "like [\"NSE\", \"BSE\"]")
    return Entitlements(frozenset(value))


def _is_code(code: Any) -> bool:
    return isinstance(code, str) and code.isascii() and code.isalpha() and code.isupper() and len(code) <= 16


def exchange_of(symbol: str) -> str:
    """The exchange of an "EXCHANGE:TRADINGSYMBOL" name."""
    return symbol.partition(":")[0]


def rejection(token: int | str, exchange: str) -> dict[str, Any]:
    """The `rejected` entry of an instrument (a token, or the name it was asked by) on `exchange`."""
    return {"token": token, "code": errors.NOT_ENTITLED, "message": f"your entitlements do not cover {exchange} data"}


def metric_label(exchange: str) -> str:
    """`exchange` as the refusals metric labels it: a Kite exchange code, or "other"."""
    return exchange if exchange in KITE_EXCHANGES else "other"
