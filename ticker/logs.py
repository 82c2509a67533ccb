"""Logging: one logfmt line per event, with secrets redacted before anything is written.

Every process (web replica, Celery workers and beat, the CLI, the simulator) logs through
`configure_logging`, which puts one handler on the root logger, on stderr, where Procfile
runners and container engines collect it. A line looks like

    ts=2026-11-27T03:45:00.123+00:00 level=info logger=ticker.web.events pid=42 msg=connect event=connect user=alice

logfmt (key=value) rather than JSON: a person reads it in a terminal, `grep user=alice` finds it,
and Loki, Datadog and Vector parse it without configuration. Fields passed with
`extra={...}` become keys of their own (`event`, `user`, `slot`, `code` …); `event()` is the short
way to log one.

Redaction runs on the finished line, so it covers the message, its arguments, extra fields and
tracebacks alike: JWTs, `Authorization` values, secret-looking query and JSON parameters
(`access_token`, `request_token`, `api_secret`, `token`, `checksum` …), and every value registered
with `register_secret` (the configured Kite API secret and access token, the app's SECRET_KEY,
account secrets decrypted at runtime) become `[redacted]`.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from datetime import UTC, datetime
from typing import Any

REDACTED = "[redacted]"
MIN_SECRET_LENGTH = 6  # shorter registered values would redact ordinary words and numbers

# Parameter names whose values are secrets wherever they appear: query strings, form bodies,
# JSON, key=value text. Kite calls them access_token, request_token, api_secret and checksum.
_SECRET_NAMES = (
    r"access_token|request_token|refresh_token|enctoken|api_secret|secret|password|passwd|"
    r"checksum|token|jwt|authorization|secret_key|private_key"
)
_PATTERNS = [
    # PEM blocks (private keys) in full; lines are already escaped to one line here.
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), REDACTED),
    # A JWT: three base64url parts, the first two JSON objects ("eyJ" is base64 of '{"').
    (re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), REDACTED),
    # Authorization header values: "Bearer <jwt>" and Kite's "token <api_key>:<access_token>".
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=-]+"), rf"\1 {REDACTED}"),
    (re.compile(r"\b(token)\s+[A-Za-z0-9_-]+:[A-Za-z0-9_-]+"), rf"\1 {REDACTED}"),
    # name=value (query strings, form bodies, logfmt) and "name": "value" (JSON, dict reprs).
    (re.compile(rf"(?i)\b((?:{_SECRET_NAMES}))=([^&\s\"',;]+)"), rf"\1={REDACTED}"),
    (re.compile(rf"(?i)([\"']?(?:{_SECRET_NAMES})[\"']?\s*:\s*)([\"'])(?:(?!\2).)+\2"), rf"\1\2{REDACTED}\2"),
]

_known_secrets: set[str] = set()
_known_lock = threading.Lock()
_known_pattern: re.Pattern | None = None


def register_secret(value: str | None) -> None:
    """Never write `value` to a log line. Call it wherever a secret enters the process."""
    global _known_pattern
    if not value or len(value) < MIN_SECRET_LENGTH:
        return
    with _known_lock:
        if value in _known_secrets:
            return
        _known_secrets.add(value)
        # Longest first, so a secret containing another is redacted whole.
        ordered = sorted(_known_secrets, key=len, reverse=True)
        _known_pattern = re.compile("|".join(re.escape(s) for s in ordered))


# Every pattern above needs one of these words; most lines have none and skip the patterns.
_MAY_HOLD_SECRETS = re.compile(rf"(?i)eyJ|bearer|PRIVATE KEY|{_SECRET_NAMES}")


def redact(text: str) -> str:
    """`text` with every secret it contains replaced by [redacted]."""
    if _known_pattern is not None:
        text = _known_pattern.sub(REDACTED, text)
    if _MAY_HOLD_SECRETS.search(text):
        for pattern, replacement in _PATTERNS:
            text = pattern.sub(replacement, text)
    return text


# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_BARE = re.compile(r"^[A-Za-z0-9_.:/@+-]+$")


def _value(value: Any) -> str:
    text = str(value)
    if _BARE.match(text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


class LogfmtFormatter(logging.Formatter):
    """One line per record: ts, level, logger, pid, msg, then extra fields; newlines escaped."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        pairs = [
            ("ts", ts),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("pid", record.process),
            ("msg", record.getMessage()),
        ]
        pairs += [(k, v) for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")]
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        elif record.exc_text:
            pairs.append(("exc", record.exc_text))
        return redact(" ".join(f"{key}={_value(value)}" for key, value in pairs))


class RedactingFilter(logging.Filter):
    """For handlers this module does not own (a test runner's, say): redact message and args."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        return True


# Tasks beat sends every few seconds: their sending, receipt and success are heartbeats, not
# news (what they change, they log themselves), so they go to DEBUG.
ROUTINE_TASKS = ("tasks.shards.supervise_shards",)
CELERY_TASK_LOGGERS = ("celery.beat", "celery.worker.strategy", "celery.app.trace")


class RoutineTaskFilter(logging.Filter):
    """Demotes Celery's INFO lines about a ROUTINE_TASKS task to DEBUG (shown only at DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.INFO or not any(task in record.getMessage() for task in ROUTINE_TASKS):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class _TickerHandler(logging.StreamHandler):
    """Marks the handler `configure_logging` installed, so calling it twice adds nothing."""


def configure_logging(level: str, secrets: list[str | None] | tuple = ()) -> None:
    """Log one redacted logfmt line per record to stderr, at `level`; never write `secrets`."""
    for secret in secrets:
        register_secret(secret)
    root = logging.getLogger()
    if not any(isinstance(handler, _TickerHandler) for handler in root.handlers):
        handler = _TickerHandler(sys.stderr)
        handler.setFormatter(LogfmtFormatter())
        root.addHandler(handler)
    for handler in root.handlers:
        if not isinstance(handler, _TickerHandler) and not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    root.setLevel(level)
    for name in CELERY_TASK_LOGGERS:
        task_logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineTaskFilter) for f in task_logger.filters):
            task_logger.addFilter(RoutineTaskFilter())
    # Libraries that narrate routine work at INFO.
    for name in ("alembic.runtime.plugins", "alembic.runtime.migration", "urllib3", "kombu", "engineio", "socketio"):
        logging.getLogger(name).setLevel(logging.WARNING)


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event as `msg=<name> event=<name>` plus `fields` as keys: `event(log, "connect", user=u)`."""
    logger.log(level, name, extra={"event": name, **fields}, stacklevel=2)
