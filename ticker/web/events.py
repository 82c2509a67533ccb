"""Socket.IO events: the public client protocol (docs/API.md)."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app, request
from flask_socketio import ConnectionRefusedError, emit, join_room, leave_room

from ticker.bus import keys
from ticker.bus.ticks import decode, project
from ticker.clock import now_iso
from ticker.extensions import socketio
from ticker.web import auth, errors
from ticker.web.errors import ClientError
from ticker.web.replica import Client, replica
from ticker.web.requests import parse_subscribe, parse_unsubscribe
from ticker.web.rooms import room_for

log = logging.getLogger(__name__)


def _limits() -> dict[str, int]:
    config = current_app.config
    return {
        "max_tokens_per_connection": config["MAX_TOKENS_PER_CONNECTION"],
        "max_tokens_per_request": config["MAX_TOKENS_PER_REQUEST"],
    }


@socketio.on("connect")
def on_connect(auth_data: Any = None) -> None:
    try:
        claims = auth.verify(auth.bearer_token(auth_data, request.args, request.headers))
    except ClientError as exc:
        log.info("refused connection from %s: %s", request.remote_addr, exc.code)
        # Socket.IO delivers this as connect_error: err.message, and err.data = {code, message}.
        raise ConnectionRefusedError(exc.message, exc.as_dict()) from None
    user = str(claims.get("sub"))
    replica().clients[request.sid] = Client(user=user, claims=claims)
    log.info("connected %s user=%s", request.sid, user)
    emit("connected", {"connection_id": request.sid, "user": user, "server_time": now_iso(), "limits": _limits()})


@socketio.on("disconnect")
def on_disconnect(*_: Any) -> None:
    client = replica().clients.pop(request.sid, None)
    if client is not None:
        _drop(client, list(client.subscriptions))
        log.info("disconnected %s user=%s", request.sid, client.user)


@socketio.on("subscribe")
def on_subscribe(data: Any = None) -> dict:
    client = replica().clients[request.sid]
    try:
        wanted = parse_subscribe(data, current_app.config["MAX_TOKENS_PER_REQUEST"])
    except ClientError as exc:
        return _error(exc)
    accepted, rejected = _admit(client, wanted.tokens, wanted.instruments)
    _add(client, accepted, wanted.mode)
    reply = {"tokens": accepted, "mode": wanted.mode, "total": len(client.subscriptions), "rejected": rejected}
    emit("subscribed", reply)
    _send_snapshot(accepted, wanted.mode)
    return reply


@socketio.on("unsubscribe")
def on_unsubscribe(data: Any = None) -> dict:
    client = replica().clients[request.sid]
    try:
        tokens = parse_unsubscribe(data, current_app.config["MAX_TOKENS_PER_CONNECTION"])
    except ClientError as exc:
        return _error(exc)
    removed = [t for t in tokens if t in client.subscriptions]
    _drop(client, removed)
    reply = {"tokens": removed, "total": len(client.subscriptions)}
    emit("unsubscribed", reply)
    return reply


@socketio.on("ping")
def on_ping(*_: Any) -> dict:
    reply = {"server_time": now_iso()}
    emit("pong", reply)
    return reply


@socketio.on("*")
def on_unknown(event: str, *_: Any) -> dict:
    return _error(ClientError(errors.UNKNOWN_EVENT, f"unknown event {str(event)[:40]!r}"))


@socketio.on_error_default
def on_failure(exc: Exception) -> dict:
    log.exception("handler failed for %s: %s", request.sid, exc)
    return _error(ClientError(errors.INTERNAL, "the server could not handle this message"))


def _error(exc: ClientError) -> dict:
    emit("error", exc.as_dict())
    return {"error": exc.as_dict()}


def _rejection(token: int | str, code: str, message: str) -> dict:
    return {"token": token, "code": code, "message": message}


def _admit(client: Client, tokens: list[int], instruments: list[str]) -> tuple[list[int], list[dict]]:
    """Split the request into accepted tokens and per-token rejections with codes."""
    registry, rejected = replica().registry, []
    resolved = registry.resolve(instruments) if instruments else []
    for name, token in zip(instruments, resolved, strict=True):
        if token is None:
            rejected.append(_rejection(name, errors.UNKNOWN_INSTRUMENT, f"no instrument {name}"))
        elif token not in tokens:
            tokens.append(token)
    known = registry.known(tokens) if tokens else []
    accepted = []
    room = current_app.config["MAX_TOKENS_PER_CONNECTION"] - len(client.subscriptions)
    for token, is_known in zip(tokens, known, strict=True):
        is_new = token not in client.subscriptions
        if not is_known:
            rejected.append(_rejection(token, errors.UNKNOWN_TOKEN, f"no instrument with token {token}"))
        elif is_new and room <= 0:
            rejected.append(_rejection(token, errors.LIMIT_EXCEEDED, "connection holds its maximum of tokens"))
        else:
            room -= is_new
            accepted.append(token)
    return accepted, rejected


def _add(client: Client, tokens: list[int], mode: str) -> None:
    """Join the rooms; a token already held in another mode moves to the new mode."""
    state = replica()
    for old_mode in {client.subscriptions[t] for t in tokens if t in client.subscriptions}:
        moved = [t for t in tokens if client.subscriptions.get(t) == old_mode]
        _drop(client, moved)
    for token in tokens:
        join_room(room_for(token, mode))
        client.subscriptions[token] = mode
    state.demand.add(tokens, mode)
    state.demand_changed()


def _drop(client: Client, tokens: list[int]) -> None:
    state = replica()
    by_mode: dict[str, list[int]] = {}
    for token in tokens:
        mode = client.subscriptions.pop(token)
        by_mode.setdefault(mode, []).append(token)
        leave_room(room_for(token, mode))
    for mode, mode_tokens in by_mode.items():
        state.demand.remove(mode_tokens, mode)
    state.demand_changed()


def _send_snapshot(tokens: list[int], mode: str) -> None:
    """The last known tick of each token, so a screen fills before the next trade."""
    if not tokens:
        return
    ticks = []
    for raw in replica().redis.hmget(keys.LAST_TICKS, tokens):
        tick = project(decode(raw), mode) if raw else None
        if tick is not None:
            ticks.append(tick)
    if ticks:
        emit("ticks", ticks)
