"""`flask accounts ...`: Kite accounts and their login flow (registered by ticker.cli).

Nothing here prints a secret or a token: `list` shows whether one is stored and its state.
"""

from __future__ import annotations

import getpass

import click
from flask import current_app
from flask.cli import AppGroup

from ticker.bus.connection import redis_client
from ticker.db import session_for
from ticker.registry import accounts, login_state

accounts_cli = AppGroup("accounts", help="Kite accounts (API keys) and their login flow.")


def _session():
    return session_for(current_app.config["DATABASE_URL"])


def _notify():
    return redis_client(current_app.config["REDIS_URL"])


@accounts_cli.command("add")
@click.argument("api_key")
@click.option("--api-secret", prompt=True, hide_input=True, help="Prompted for when not given.")
@click.option("--access-token", default=None, help="A current access token, if you have one.")
def accounts_add(api_key: str, api_secret: str, access_token: str | None) -> None:
    """Store a Kite API key and its secret (encrypted)."""
    with _session() as session:
        try:
            accounts.add_account(session, api_key, api_secret, access_token, notify=_notify())
        except (accounts.AccountError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"added Kite account {api_key}; log in with: flask accounts login-url {api_key}")


@accounts_cli.command("list")
def accounts_list() -> None:
    """Show each account's token state (never the secrets)."""
    with _session() as session:
        rows = accounts.account_summaries(session)
    if not rows:
        click.echo("no Kite accounts")
    for row in rows:
        state = "valid" if row["token_valid"] else f"invalid ({row['token_invalid_reason'] or 'no token'})"
        expires = row["token_expires_at"].isoformat() if row["token_expires_at"] else "-"
        updated = row["token_updated_at"].isoformat() if row["token_updated_at"] else "-"
        enabled = "" if row["enabled"] else " [disabled]"
        click.echo(f"{row['api_key']}{enabled}  token: {state}  updated: {updated}  expires: {expires}")


@accounts_cli.command("remove")
@click.argument("api_key")
@click.confirmation_option(prompt="Remove this account? Its shards stop streaming.")
def accounts_remove(api_key: str) -> None:
    """Delete an account."""
    with _session() as session:
        try:
            accounts.remove_account(session, api_key, notify=_notify())
        except accounts.AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"removed Kite account {api_key}")


@accounts_cli.command("login-url")
@click.argument("api_key")
def accounts_login_url(api_key: str) -> None:
    """Print the Kite login URL; after login Kite redirects to this service's /kite/callback.
    The URL works once, within ten minutes (ticker.registry.login_state)."""
    with _session() as session:
        try:
            accounts.get_account(session, api_key)
        except accounts.AccountError as exc:
            raise click.ClickException(str(exc)) from None
    config = current_app.config
    state = login_state.issue(redis_client(config["REDIS_URL"]), f"cli:{getpass.getuser()}", api_key)
    click.echo(accounts.login_url(config["KITE_LOGIN_ROOT"], api_key, login_state.redirect_params(state)))


@accounts_cli.command("set-token")
@click.argument("api_key")
@click.option("--access-token", prompt=True, hide_input=True, help="Prompted for when not given.")
@click.option("--refresh-token", default=None)
def accounts_set_token(api_key: str, access_token: str, refresh_token: str | None) -> None:
    """Store an access token obtained elsewhere (shards switch to it at once)."""
    with _session() as session:
        try:
            accounts.store_access_token(session, api_key, access_token, refresh_token, notify=_notify())
        except accounts.AccountError as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(f"stored a new access token for {api_key}")


def reload_with_progress(force: bool) -> None:
    """`flask instruments load`: stream the dump with a progress bar, then print the summary
    (once, after the bar: the loader's own log line is left out). Runs as the beat job
    `registry_reload` does, under its lock, so /health's jobs check shows this run too."""
    from ticker.jobs import BUSY, run_job
    from ticker.registry.dump import DumpError
    from ticker.registry.loader import RELOAD_JOB, RELOAD_LOCK_SECS, dump_size, reload_instruments

    config = current_app.config
    size = dump_size(config["KITE_API_ROOT"])
    with click.progressbar(length=size or 0, label="instruments dump", file=click.get_text_stream("stderr")) as bar:
        try:
            report = run_job(redis_client(config["REDIS_URL"]), config["DATABASE_URL"], RELOAD_JOB,
                             lambda: reload_instruments(current_app, progress=bar.update,
                                                        min_ratio=0.0 if force else None, log_summary=False),
                             RELOAD_LOCK_SECS, describe=lambda report: report.summary())
        except DumpError as exc:
            raise click.ClickException(f"registry unchanged: {exc}") from None
    if report == BUSY:
        raise click.ClickException("a registry reload is already running elsewhere: try again when it is done")
    click.echo(f"reloaded {report.summary()}")
    for bad in report.bad_rows[:20]:
        click.echo(f"  skipped {bad}")
