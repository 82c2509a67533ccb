"""The JWKS key set a replica verifies tokens with: fetching, caching and the outage policy.

PyJWT parses the keys (`PyJWKSet`); this module decides when to fetch and what to trust
(docs/API.md, "Authentication"):

- The cache mirrors the set as last fetched: a key gone from it is refused from then on.
- The set is refetched on a schedule: the response's `Cache-Control: max-age`, clamped between
  a floor and a ceiling (the ceiling when the header is absent). The replica's `KeySetRefresh`
  loop does that in the background, so verifications never wait for a scheduled fetch.
- A token whose `kid` the set lacks makes a refetch at once (a rotated-in key works on first
  sight), single-flight (concurrent verifications wait for the one fetch in flight), at most
  once per `UNKNOWN_KID_REFETCH_SECS` (random kids cannot make a fetch storm).
- A failed fetch (unreachable, slow beyond the timeout, an HTTP error, a body that is no key
  set) keeps the last good set; fetches are retried with backoff. The set stays in use for
  `stale_secs` past its max-age (`/health` degraded), then every token is refused with
  `auth_unavailable` until a fetch succeeds (`/health` unavailable).

Under gevent and eventlet the `threading` module is monkey-patched, so the lock is green.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt as pyjwt

from ticker import metrics
from ticker.web.loops import Loop

log = logging.getLogger(__name__)

UNKNOWN_KID_REFETCH_SECS = 1.0  # at most one refetch for unknown kids a second
RETRY_FIRST_SECS = 1.0  # backoff after a failed fetch: 1, 2, 4 ... s
RETRY_MAX_SECS = 30.0  # ... up to this (and never longer than the max-age)
REFRESH_EVERY_SECS = 1.0  # how often the loop looks whether the set is due
MAX_BODY_BYTES = 1 << 20  # a key set is a few KiB; a bigger answer is not one
_MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*(\d+)", re.IGNORECASE)

# Outcomes of a fetch (the `outcome` label of ticker_jwks_fetches_total).
OK, UNREACHABLE, HTTP_ERROR, INVALID = "ok", "unreachable", "http_error", "invalid"
# What made a fetch (the `trigger` label).
SCHEDULE, UNKNOWN_KID = "schedule", "unknown_kid"
# States of the set (`/health`).
NONE, FRESH, STALE, EXPIRED = "none", "fresh", "stale", "expired"


class UnknownKey(Exception):
    """The token's `kid` is not in the current key set (a forged or withdrawn key)."""


class KeysUnavailable(Exception):
    """No key set recent enough to trust: the JWKS URL has failed for too long."""


class FetchFailed(Exception):
    """A fetch that gave no key set; `outcome` says how it failed."""

    def __init__(self, outcome: str, message: str):
        super().__init__(message)
        self.outcome = outcome


@dataclass(frozen=True)
class Fetched:
    """A key set as fetched: signing keys by kid, and the max-age its response stated."""

    keys: dict[str, pyjwt.PyJWK]
    max_age_secs: int | None


def fetch(url: str, timeout_secs: float) -> Fetched:
    """GET the JWKS at `url` and parse it with PyJWT; raises FetchFailed."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_secs) as answer:  # noqa: S310  (the configured URL)
            body = answer.read(MAX_BODY_BYTES + 1)
            cache_control = answer.headers.get("Cache-Control", "")
    except urllib.error.HTTPError as exc:
        raise FetchFailed(HTTP_ERROR, f"HTTP {exc.code} from the JWKS URL") from exc
    except (OSError, ValueError) as exc:  # refused, DNS, timeout, a malformed URL
        raise FetchFailed(UNREACHABLE, f"JWKS URL unreachable: {exc}") from exc
    return parse(body, cache_control)


def parse(body: bytes, cache_control: str = "") -> Fetched:
    """The signing keys (`use` sig or unset, with a `kid`) of a JWKS document; raises FetchFailed."""
    if len(body) > MAX_BODY_BYTES:
        raise FetchFailed(INVALID, f"JWKS answer larger than {MAX_BODY_BYTES} bytes")
    try:
        key_set = pyjwt.PyJWKSet.from_dict(json.loads(body))
    except (ValueError, TypeError, AttributeError, pyjwt.PyJWTError) as exc:
        raise FetchFailed(INVALID, f"JWKS answer is not a key set: {exc}") from exc
    keys = {key.key_id: key for key in key_set.keys if key.key_id and key.public_key_use in ("sig", None)}
    if not keys:
        raise FetchFailed(INVALID, "JWKS answer has no signing key with a kid")
    found = _MAX_AGE.search(cache_control or "")
    return Fetched(keys, int(found.group(1)) if found else None)


class KeySet:
    """The keys of one JWKS URL, fetched, cached and trusted by the policy above.

    `max_age_secs` is the ceiling (and the max-age when the response states none),
    `min_age_secs` the floor, `stale_secs` how long past its max-age a set stays in use when
    fetches fail, `timeout_secs` the longest a fetch may take. `clock` (monotonic seconds) and
    `fetcher(url, timeout)` are for tests."""

    def __init__(self, url: str, *, max_age_secs: float, min_age_secs: float, stale_secs: float,
                 timeout_secs: float, clock: Callable[[], float] = time.monotonic,
                 fetcher: Callable[[str, float], Fetched] = fetch):
        self.url = url
        self.ceiling, self.floor = max_age_secs, min(min_age_secs, max_age_secs)
        self.stale_secs, self.timeout_secs = stale_secs, timeout_secs
        self.clock, self.fetcher = clock, fetcher
        self.keys: dict[str, pyjwt.PyJWK] = {}
        self.fetched_at: float | None = None  # the last successful fetch
        self.max_age = max_age_secs  # of the last successful fetch, clamped
        self.last_error: str | None = None
        self.failures = 0  # consecutive
        self.retry_at = 0.0  # no fetch before this (backoff)
        self.unknown_kid_at = -UNKNOWN_KID_REFETCH_SECS  # the last refetch for an unknown kid
        self._lock = threading.Lock()

    # Verification ------------------------------------------------------------------------

    def key_for(self, kid: Any) -> pyjwt.PyJWK:
        """The key named `kid`. Raises UnknownKey (no such key now) or KeysUnavailable (no set
        trusted enough). Waits for a fetch only when the answer depends on it: no usable set,
        or an unknown kid (bounded by `timeout_secs`)."""
        if not self.usable() and self.clock() >= self.retry_at:
            self.refresh(SCHEDULE, wait=True)
        if not self.usable():
            raise KeysUnavailable(self.last_error or "no JWKS key set fetched yet")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None and isinstance(kid, str) and (self._lock.locked() or self._may_chase(kid)):
            self.refresh(UNKNOWN_KID, wait=True)
            key = self.keys.get(kid) if self.usable() else None
        if key is None:
            raise UnknownKey(f"no key with kid {str(kid)[:40]!r} in the issuer's key set")
        return key

    def _may_chase(self, _kid: str) -> bool:
        now = self.clock()
        return now >= self.retry_at and now - self.unknown_kid_at >= UNKNOWN_KID_REFETCH_SECS

    # Fetching ----------------------------------------------------------------------------

    def refresh_if_due(self) -> None:
        """Fetch when the set's max-age has passed (or none was fetched) and no backoff holds."""
        now = self.clock()
        due = self.fetched_at is None or now - self.fetched_at >= self.max_age
        if due and now >= self.retry_at:
            self.refresh(SCHEDULE, wait=False)

    def refresh(self, trigger: str, wait: bool) -> None:
        """One fetch at a time: a caller finding one in flight waits for it (`wait`) or not."""
        if not self._lock.acquire(blocking=False):
            if wait and self._lock.acquire(timeout=self.timeout_secs + 1):
                self._lock.release()
            return
        try:
            if trigger == UNKNOWN_KID:
                self.unknown_kid_at = self.clock()
            self._fetch(trigger)
        finally:
            self._lock.release()

    def _fetch(self, trigger: str) -> None:
        try:
            fetched = self.fetcher(self.url, self.timeout_secs)
        except FetchFailed as exc:
            self._failed(trigger, exc.outcome, str(exc))
            return
        except Exception as exc:  # noqa: BLE001  (whatever a fetch raises, the last good set stands)
            self._failed(trigger, UNREACHABLE, f"{type(exc).__name__}: {exc}")
            return
        metrics.JWKS_FETCHES.labels(outcome=OK, trigger=trigger).inc()
        if set(fetched.keys) != set(self.keys):
            log.info("JWKS key set now %s (was %s)", sorted(fetched.keys), sorted(self.keys))
        stated = fetched.max_age_secs if fetched.max_age_secs is not None else self.ceiling
        self.keys, self.max_age = fetched.keys, max(self.floor, min(stated, self.ceiling))
        self.fetched_at, self.last_error, self.failures, self.retry_at = self.clock(), None, 0, 0.0

    def _failed(self, trigger: str, outcome: str, message: str) -> None:
        metrics.JWKS_FETCHES.labels(outcome=outcome, trigger=trigger).inc()
        self.failures += 1
        self.last_error = message
        backoff = min(RETRY_FIRST_SECS * 2 ** (self.failures - 1), RETRY_MAX_SECS, max(self.max_age, 1.0))
        self.retry_at = self.clock() + backoff
        log.warning("JWKS fetch failed (%s, %d in a row; next try in %gs): %s", outcome, self.failures, backoff,
                    message)

    # State -------------------------------------------------------------------------------

    def state(self) -> str:
        """none (never fetched), fresh, stale (refresh overdue: in use, degraded) or expired
        (overdue by more than stale_secs: refused). A refresh is overdue once the set is older
        than its max-age plus the loop's turn and the fetch's timeout (a refresh in flight)."""
        if self.fetched_at is None:
            return NONE
        overdue = self.clock() - self.fetched_at - self.max_age - REFRESH_EVERY_SECS - self.timeout_secs
        if overdue <= 0:
            return FRESH
        return STALE if overdue <= self.stale_secs else EXPIRED

    def usable(self) -> bool:
        return self.state() in (FRESH, STALE)

    def report(self) -> dict[str, Any]:
        """For `/health`: ok unless expired or never fetched; degraded while stale."""
        state = self.state()
        report: dict[str, Any] = {
            "ok": state in (FRESH, STALE), "state": state, "url": self.url, "kids": sorted(self.keys),
            "max_age_secs": self.max_age, "stale_secs": self.stale_secs, "failures": self.failures,
        }
        if self.fetched_at is not None:
            report["age_secs"] = round(self.clock() - self.fetched_at, 1)
        if self.last_error:
            report["last_error"] = self.last_error
        if state == STALE:
            report["degraded"] = True
            report["reason"] = "JWKS refresh failing: verifying with the last good key set"
        elif state in (NONE, EXPIRED):
            report["reason"] = "no JWKS key set recent enough: every token is refused auth_unavailable"
        return report


class KeySetRefresh(Loop):
    """A replica's loop that keeps its key set fresh, so verifications need not fetch."""

    name = "jwks_refresh"
    every_secs = REFRESH_EVERY_SECS

    def __init__(self, key_set: KeySet, sleep: Callable[[float], None]):
        super().__init__(sleep)
        self.key_set = key_set

    def turn(self) -> None:
        self.key_set.refresh_if_due()
