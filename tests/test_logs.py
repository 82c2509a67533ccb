"""Log lines: one logfmt line per record, and no secret ever written (pure logic)."""

from __future__ import annotations

import io
import logging

import pytest

from ticker.logs import REDACTED, LogfmtFormatter, event, redact, register_secret

JWT = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhbGljZSIsImV4cCI6MTcwMDAwMDAwMH0"
    ".c2lnbmF0dXJlLWJ5dGVzLWhlcmUtYW5kLW1vcmU"
)


@pytest.mark.parametrize(
    "text, secret",
    [
        (f"connect from 10.0.0.1 auth={{'token': '{JWT}'}}", JWT),
        (f"GET /socket.io/?EIO=4&transport=websocket&token={JWT}", JWT),
        (f"headers Authorization: Bearer {JWT}", JWT),
        ("GET /connect/login?api_key=k1&request_token=Rq7xk2PzLs9", "Rq7xk2PzLs9"),
        ("POST /session/token api_key=k1&request_token=Rq7xk2&checksum=9f2c1d0e8a", "9f2c1d0e8a"),
        ('{"access_token": "aT0ken-abc123", "user_id": "AB1234"}', "aT0ken-abc123"),
        ("Authorization: token sim_key:aT0ken-abc123", "aT0ken-abc123"),
        ("-----BEGIN PRIVATE KEY-----\\nMIIEvQIBADANBg\\n-----END PRIVATE KEY-----", "MIIEvQIBADANBg"),
    ],
)
def test_secret_shapes_are_redacted(text, secret):
    assert secret not in redact(text)
    assert REDACTED in redact(text)


def test_registered_secrets_are_redacted_wherever_they_appear():
    register_secret("hunter2-api-secret")
    assert redact("kite said: bad hunter2-api-secret!") == f"kite said: bad {REDACTED}!"


def test_ordinary_text_survives():
    line = "refused connection: token_expired token has expired; subscribed 3 tokens instrument_token=256265"
    assert redact(line) == line


def test_one_line_per_record_with_fields_and_redaction():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(LogfmtFormatter())
    logger = logging.getLogger("tests.logs.line")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        event(logger, "connect", user="alice", note=f"multi\nline {JWT}")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    first, second = stream.getvalue().splitlines()
    assert " level=info logger=tests.logs.line " in first
    assert first.endswith(f'msg=connect event=connect user=alice note="multi\\nline {REDACTED}"')
    assert 'msg=failed exc="Traceback' in second and "ValueError: boom" in second


@pytest.mark.parametrize(("logger", "message"), [
    ("celery.beat", "Scheduler: Sending due task supervise shards (tasks.shards.supervise_shards)"),
    ("celery.worker.strategy", "Task tasks.shards.supervise_shards[5f0c] received"),
    ("celery.app.trace", "Task tasks.shards.supervise_shards[5f0c] succeeded in 0.01s: []"),
])
def test_a_routine_heartbeat_task_is_logged_at_debug(logger, message):
    from ticker.logs import configure_logging

    seen = io.StringIO()
    handler = logging.StreamHandler(seen)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        configure_logging("INFO")
        logging.getLogger(logger).info(message)
        logging.getLogger(logger).info("Task tasks.registry.reload_registry[1] succeeded in 9s: None")
        configure_logging("DEBUG")
        logging.getLogger(logger).info(message)
    finally:
        root.removeHandler(handler)
        configure_logging("INFO")

    lines = seen.getvalue().splitlines()
    assert lines == ["Task tasks.registry.reload_registry[1] succeeded in 9s: None", message]
