"""Kite accounts in PostgreSQL: secrets encrypted at rest, token state, change notices."""

from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from ticker.bus import keys
from ticker.db import session_for
from ticker.registry import accounts, secrets
from ticker.registry.models import KiteAccount

SECRET = "s3cr3t-api-secret-value"
TOKEN = "plain-access-token-0123456789"
REFRESH = "plain-refresh-token-9876543210"


@pytest.fixture
def session(app, accounts_database):
    with app.app_context(), session_for(accounts_database) as session:
        session.query(KiteAccount).delete()
        session.commit()
        yield session


def mine(session) -> list[accounts.AccountCredentials]:
    return [creds for creds in accounts.active_accounts(session) if creds.api_key.startswith("key_")]


def summaries(session, api_key: str) -> list[dict]:
    return [s for s in accounts.account_summaries(session) if s["api_key"] == api_key]


def raw_rows(session) -> str:
    """Every column of every account row, as PostgreSQL stores it."""
    rows = session.execute(text("SELECT * FROM kite_accounts")).all()
    return repr([tuple(row) for row in rows])


def test_secrets_are_encrypted_at_rest_and_round_trip(session):
    accounts.add_account(session, "key_a", SECRET, TOKEN)
    accounts.store_access_token(session, "key_a", TOKEN, refresh_token=REFRESH)

    stored = raw_rows(session)
    assert "key_a" in stored
    for plaintext in (SECRET, TOKEN, REFRESH):
        assert plaintext not in stored
    [creds] = mine(session)
    assert (creds.api_key, creds.api_secret, creds.access_token, creds.token_valid) == ("key_a", SECRET, TOKEN, True)
    assert accounts.refresh_token(session, "key_a") == REFRESH
    assert SECRET not in repr(creds) and TOKEN not in repr(creds)


def test_token_lifecycle_invalid_then_renewed(session):
    accounts.add_account(session, "key_b", SECRET)
    assert mine(session)[0].access_token is None

    accounts.store_access_token(session, "key_b", TOKEN)
    accounts.mark_token_invalid(session, "key_b", "TokenException: Incorrect api_key or access_token.")
    [summary] = summaries(session, "key_b")
    assert summary["token_valid"] is False
    assert summary["token_invalid_reason"].startswith("TokenException")

    accounts.store_access_token(session, "key_b", "another-token")
    [creds] = mine(session)
    assert (creds.access_token, creds.token_valid) == ("another-token", True)
    assert summaries(session, "key_b")[0]["token_invalid_reason"] is None


def test_token_changes_are_announced(session, redis):
    pubsub = redis.pubsub()
    pubsub.subscribe(keys.ACCOUNTS_CHANGED)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    accounts.add_account(session, "key_c", SECRET)
    accounts.store_access_token(session, "key_c", TOKEN, notify=redis)
    message = pubsub.get_message(timeout=2)
    pubsub.close()
    assert message and message["data"] == "key_c"


def test_unknown_and_duplicate_accounts_are_clear_errors(session):
    accounts.add_account(session, "key_d", SECRET)
    with pytest.raises(accounts.AccountError, match="exists already"):
        accounts.add_account(session, "key_d", SECRET)
    with pytest.raises(accounts.AccountError, match="no Kite account"):
        accounts.store_access_token(session, "nope", TOKEN)
    accounts.remove_account(session, "key_d")
    assert mine(session) == []


def test_config_account_is_added_only_when_there_is_none(session, app):
    config = {**app.config, "KITE_API_KEY": "key_config"}
    added = accounts.ensure_config_account(session, config)
    assert added is not None and added.api_key == "key_config"
    [creds] = mine(session)
    assert creds.access_token == app.config["KITE_ACCESS_TOKEN"] and creds.token_valid
    assert accounts.ensure_config_account(session, config) is None


def test_a_secret_under_an_unknown_key_is_a_clear_error(app):
    with app.app_context():
        ciphertext = Fernet(Fernet.generate_key()).encrypt(b"x").decode()
        with pytest.raises(secrets.SecretError, match="SECRETS_KEYS"):
            secrets.decrypt(ciphertext)


def test_keys_rotate(app):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    with app.app_context():
        app.config["SECRETS_KEYS"] = [old]
        try:
            ciphertext = secrets.encrypt(SECRET)
            app.config["SECRETS_KEYS"] = [new, old]
            rotated = secrets.rotate(ciphertext)
            app.config["SECRETS_KEYS"] = [new]
            assert secrets.decrypt(rotated) == SECRET
            with pytest.raises(secrets.SecretError):
                secrets.decrypt(ciphertext)
        finally:
            app.config["SECRETS_KEYS"] = []


def test_production_without_keys_refuses():
    with pytest.raises(secrets.SecretError, match="SECRETS_KEYS"):
        secrets.cipher_for([], "production", "whatever")


def test_cli_never_prints_secrets(session, app, accounts_database):
    runner = app.test_cli_runner()
    app.config["DATABASE_URL"], shared = accounts_database, app.config["DATABASE_URL"]
    try:
        cli_round_trip(runner, session, app)
    finally:
        app.config["DATABASE_URL"] = shared


def cli_round_trip(runner, session, app):
    result = runner.invoke(args=["accounts", "add", "key_e", "--api-secret", SECRET, "--access-token", TOKEN])
    assert result.exit_code == 0, result.output
    listing = runner.invoke(args=["accounts", "list"])
    assert "key_e" in listing.output and "valid" in listing.output
    assert SECRET not in listing.output and TOKEN not in listing.output
    url = runner.invoke(args=["accounts", "login-url", "key_e"]).output.strip()
    base, _, state = url.partition("&redirect_params=state%3D")
    assert base == f"{app.config['KITE_LOGIN_ROOT']}/connect/login?api_key=key_e&v=3"
    assert len(state) >= 32, url  # a single-use login state, bound to this account (docs/API.md)
    assert runner.invoke(args=["accounts", "set-token", "key_e", "--access-token", "t2"]).exit_code == 0
    assert mine(session)[0].access_token == "t2"
    missing = runner.invoke(args=["accounts", "remove", "nope", "--yes"])
    assert missing.exit_code != 0 and "no Kite account" in missing.output
