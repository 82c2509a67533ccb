"""The registry's Redis mirror: two hashes (token -> "EXCHANGE:TRADINGSYMBOL" and back) that
every replica reads on the subscribe path, and the fingerprint of the registry they hold.

The fingerprint is the SHA-1 of the registry's (token, symbol) pairs as PostgreSQL lists them
(`PAIRS_COPY`), so it names the table's contents, whoever wrote them. The loader reads them with
COPY; a web replica, where psycopg2 refuses COPY (its green wait callback), reads them with a
plain query and writes the same text (`query_pairs`), so both name a registry alike. A reload changes a few
thousand of ~100,000 instruments: when the hashes hold exactly the registry the reload started
from, it applies the day's changes to them in one MULTI/EXEC; otherwise (a first load, a Redis
that lost them, a reload that died between its commit and the mirror) a background thread
writes them whole under staging names while PostgreSQL finishes, and they are renamed over the
live ones once the registry commits. Either way readers see the old mirror or the new one,
never a mix.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import re
import threading
import uuid
from dataclasses import dataclass

import redis
from sqlalchemy.orm import Session

from ticker.bus import keys

log = logging.getLogger(__name__)

PAIRS_QUERY = "SELECT instrument_token, exchange || ':' || tradingsymbol FROM instruments ORDER BY instrument_token"
PAIRS_COPY = f"COPY ({PAIRS_QUERY}) TO STDOUT"
PAIRS_PER_FETCH = 10_000  # rows per round trip when a replica reads the pairs (a few hundred KB)
FIELDS_PER_COMMAND = 10_000  # one HSET of this many fields keeps Redis busy for a few ms at most
# Beyond this share of the registry, changing the hashes in place would hold Redis in one long
# MULTI/EXEC; writing them whole under staging names does not.
MAX_CHANGED_SHARE = 0.25
STAGING_TTL_SECS = 3600  # staging hashes of a writer that died go away by themselves
REBUILD_LOCK_SECS = 30  # as long as a replica may hold keys.REGISTRY_LOCK (Registry._rebuild)
_ESCAPED = re.compile(r"\\(.)")  # COPY's text format escapes a backslash and control characters
_UNESCAPE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
# What COPY's text format writes for a backslash and the control characters it escapes (it
# writes any other character as it is).
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                               "\t": "\\t", "\v": "\\v"})
_COPY_NULL = "\\N"
_LIVE = (keys.REGISTRY_TOKENS, keys.REGISTRY_SYMBOLS)


def fingerprint(pairs_text: bytes) -> str:
    """The fingerprint of a registry from its `PAIRS_COPY` text."""
    return hashlib.sha1(pairs_text).hexdigest()


def copy_pairs(cursor) -> bytes:
    """The registry's `PAIRS_COPY` text, read on `cursor` (a psycopg2 cursor) in its transaction."""
    out = io.BytesIO()
    cursor.copy_expert(PAIRS_COPY, out)
    return out.getvalue()


def query_pairs(session: Session) -> bytes:
    """The registry's `PAIRS_COPY` text, byte for byte, read with a plain query (a server-side
    cursor, PAIRS_PER_FETCH rows a round trip) in `session`'s transaction: for processes where
    psycopg2 refuses COPY. The database's encoding is UTF-8, as COPY's output then is."""
    # psycopg2's own cursor: SQLAlchemy's rows would double the time of ~100,000 of them.
    cursor = session.connection().connection.driver_connection.cursor(name="registry_pairs")
    try:
        cursor.execute(PAIRS_QUERY)
        chunks = []
        while rows := cursor.fetchmany(PAIRS_PER_FETCH):
            chunks.append("".join([copy_line(token, symbol) for token, symbol in rows]))
    finally:
        cursor.close()
    return "".join(chunks).encode()


def copy_line(token: int, symbol: str | None) -> str:
    """A (token, symbol) pair as a line of COPY's text format (tab-separated, escaped, `\\N` for NULL)."""
    return f"{token}\t{_COPY_NULL if symbol is None else symbol.translate(_COPY_ESCAPES)}\n"


def parse_pairs(pairs_text: bytes) -> dict[int, str]:
    """token -> "EXCHANGE:TRADINGSYMBOL" from `PAIRS_COPY` text."""
    pairs = {}
    for line in pairs_text.decode().split("\n")[:-1]:
        token, symbol = line.split("\t")
        if "\\" in symbol:
            symbol = _ESCAPED.sub(lambda m: _UNESCAPE.get(m[1], m[1]), symbol)
        pairs[int(token)] = symbol
    return pairs


@dataclass
class MirrorChanges:
    """The mirror's side of a reload's changes; they apply only to the registry `old` names."""

    old: str  # fingerprint of the registry the reload started from
    size: int  # its instruments
    tokens: dict[int, str]  # token -> its new symbol
    gone_tokens: list[int]
    symbols: dict[str, int]  # symbol -> its new token
    gone_symbols: list[str]

    @classmethod
    def between(cls, went: dict[int, str], came: dict[int, str], new: dict[int, str], old: str,
                size: int) -> MirrorChanges:
        """From the pairs that `went` (tokens gone or resymbolled) from the old registry and
        `came` (new tokens or new symbols) in `new`, the new registry."""
        symbols = {symbol: token for token, symbol in came.items()}
        return cls(
            old=old, size=size, tokens=came, gone_tokens=[token for token in went if token not in new],
            # Symbols are unique, so one still in the registry is among those that came.
            symbols=symbols, gone_symbols=[symbol for symbol in went.values() if symbol not in symbols],
        )


def _holding(client: redis.Redis, registry_fingerprint: str, size: int) -> bool:
    """Whether the mirror holds the registry of this fingerprint and size."""
    held = client.get(keys.REGISTRY_MIRRORED)
    if isinstance(held, bytes):
        held = held.decode()
    return held == registry_fingerprint and all(client.hlen(key) == size for key in _LIVE)


def apply_changes(client: redis.Redis, changes: MirrorChanges, registry_fingerprint: str) -> bool:
    """Apply `changes` in one MULTI/EXEC if the mirror holds the registry they start from, and
    record the new registry's fingerprint; False (nothing written) if it does not."""
    with client.pipeline() as pipe:
        try:
            pipe.watch(keys.REGISTRY_MIRRORED, *_LIVE)
            if not _holding(pipe, changes.old, changes.size):
                return False
            pipe.multi()
            if changes.gone_tokens:
                pipe.hdel(keys.REGISTRY_TOKENS, *changes.gone_tokens)
            if changes.gone_symbols:
                pipe.hdel(keys.REGISTRY_SYMBOLS, *changes.gone_symbols)
            for key, mapping in zip(_LIVE, (changes.tokens, changes.symbols), strict=True):
                if mapping:
                    pipe.hset(key, mapping=mapping)
            pipe.set(keys.REGISTRY_MIRRORED, registry_fingerprint)
            pipe.execute()
        except redis.WatchError:
            return False  # someone rewrote the mirror meanwhile
    return True


class StagedMirror:
    """The whole mirror of `pairs` (token -> "EXCHANGE:TRADINGSYMBOL"), written under staging
    names of its own by a background thread; `swap_in` renames it over the live hashes."""

    def __init__(self, client: redis.Redis, pairs: dict[int, str]):
        self.client, self.empty = client, not pairs
        suffix = uuid.uuid4().hex  # two writers never share staging hashes
        self.staging = [f"{key}:staging:{suffix}" for key in _LIVE]
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._write, args=(pairs,), name="registry-mirror", daemon=True)
        self._thread.start()  # pairs must not change until it is done

    def _write(self, pairs: dict[int, str]) -> None:
        try:
            by_token = [(str(token), symbol) for token, symbol in pairs.items()]
            by_symbol = [(symbol, token) for token, symbol in by_token]
            commands = []
            for key, items in zip(self.staging, (by_token, by_symbol), strict=True):
                hsets = _hset_commands(key, items)
                # The TTL goes on once the hash exists; the HSETs after it keep it.
                commands += hsets[:1] + [_command("EXPIRE", key, str(STAGING_TTL_SECS))] + hsets[1:]
            _send(self.client, commands)
        except Exception as exc:  # noqa: BLE001  (re-raised by swap_in, in the caller's thread)
            self._error = exc

    def wait(self) -> None:
        """Until the staging hashes are written; raises what stopped the writing."""
        self._thread.join()
        if self._error is not None:
            raise self._error

    def swap_in(self, registry_fingerprint: str) -> None:
        """Once the registry of `registry_fingerprint` is committed: make this the mirror."""
        self.wait()
        with self.client.pipeline() as pipe:  # MULTI/EXEC
            for staged, key in zip(self.staging, _LIVE, strict=True):
                if self.empty:
                    pipe.delete(key)
                else:
                    pipe.rename(staged, key)
                    pipe.persist(key)
            pipe.set(keys.REGISTRY_MIRRORED, registry_fingerprint)
            pipe.execute()

    def discard(self) -> None:
        """The registry did not commit: drop the staging hashes."""
        self._thread.join()
        self.client.delete(*self.staging)


def write_mirror(client: redis.Redis, pairs: dict[int, str], registry_fingerprint: str) -> None:
    """Write the whole mirror of `pairs`, the registry of `registry_fingerprint`."""
    StagedMirror(client, pairs).swap_in(registry_fingerprint)


class MirrorUpdate:
    """How one reload brings the mirror along: planned while PostgreSQL replaces the registry
    (`whole` or `plan`), done once it has committed (`finish`), dropped if it fails (`abandon`)."""

    def __init__(self, client: redis.Redis):
        self.client = client
        self.changes: MirrorChanges | None = None
        self.staged: StagedMirror | None = None

    def whole(self, pairs: dict[int, str]) -> None:
        """Start writing the whole mirror of the new registry `pairs` in the background."""
        self.staged = StagedMirror(self.client, pairs)

    def plan(self, went: dict[int, str], came: dict[int, str], new: dict[int, str], old: str, size: int) -> None:
        """Change the mirror by the reload's changes (see MirrorChanges.between) if it holds
        the registry they start from and they are few; else write it whole."""
        if len(went) + len(came) <= MAX_CHANGED_SHARE * size and self._holds(old, size):
            self.changes = MirrorChanges.between(went, came, new, old, size)
        else:
            self.whole(new)

    def _holds(self, registry_fingerprint: str, size: int) -> bool:
        try:
            return _holding(self.client, registry_fingerprint, size)
        except redis.RedisError:  # the registry commits all the same; `finish` raises it then
            return False

    def finish(self, pairs: dict[int, str], registry_fingerprint: str) -> None:
        """The registry `pairs` of `registry_fingerprint` is committed: bring the mirror to it."""
        # A replica rebuilding a lost mirror from the database holds this lock meanwhile: wait,
        # or it could rename a mirror of the registry before this one over this one.
        with self.client.lock(keys.REGISTRY_LOCK, timeout=REBUILD_LOCK_SECS, blocking_timeout=REBUILD_LOCK_SECS):
            if self.staged is not None:
                self.staged.swap_in(registry_fingerprint)
            elif self.changes is None or not apply_changes(self.client, self.changes, registry_fingerprint):
                write_mirror(self.client, pairs, registry_fingerprint)

    def abandon(self) -> None:
        """The reload failed: drop what was staged (its TTL does, if Redis is unreachable)."""
        if self.staged is not None:
            try:
                self.staged.discard()
            except redis.RedisError:
                log.warning("could not drop the staged registry mirror; it expires by itself", exc_info=True)


# redis-py packs each argument of a command in Python, which for two hashes of ~100,000
# fields costs most of a second; packing the protocol here costs a fifth of that.

def _bulk(arg: str) -> bytes:
    data = arg.encode()
    return b"$%d\r\n%b\r\n" % (len(data), data)


def _command(*args: str) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(map(_bulk, args))


def _hset_commands(key: str, pairs: list[tuple[str, str]]) -> list[bytes]:
    return [_hset(key, pairs[start : start + FIELDS_PER_COMMAND]) for start in range(0, len(pairs), FIELDS_PER_COMMAND)]


def _hset(key: str, pairs: list[tuple[str, str]]) -> bytes:
    body = "".join([f"${len(f)}\r\n{f}\r\n${len(v)}\r\n{v}\r\n" for f, v in pairs])
    if not body.isascii():  # the lengths above count characters; the protocol counts bytes
        return _command("HSET", key, *itertools.chain.from_iterable(pairs))
    return b"*%d\r\n" % (2 + 2 * len(pairs)) + _bulk("HSET") + _bulk(key) + body.encode()


def _send(client: redis.Redis, commands: list[bytes]) -> None:
    """Send packed commands on one of the client's connections; raise the first error reply."""
    connection = client.connection_pool.get_connection()
    try:
        connection.send_packed_command(commands)
        for _ in commands:
            connection.read_response()
    except BaseException:
        connection.disconnect()  # replies may be left unread on it
        raise
    finally:
        client.connection_pool.release(connection)
