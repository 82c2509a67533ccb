"""`GET /instruments`: instrument search for a front end's search box (any valid JWT)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ticker.db import session_for
from ticker.registry.instruments import SEARCH_LIMIT_MAX, search
from ticker.web import errors
from ticker.web.auth import bearer_token, http_status, verify
from ticker.web.entitlements import entitlements_from
from ticker.web.errors import ClientError

bp = Blueprint("instruments", __name__)

DEFAULT_LIMIT = 20
MAX_QUERY_CHARS = 64  # longer than any "EXCHANGE:TRADINGSYMBOL"


def client_error(exc: ClientError, status: int):
    return jsonify(exc.as_dict()), status


def _limit() -> int:
    raw = request.args.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= SEARCH_LIMIT_MAX:
        raise ClientError(errors.BAD_REQUEST, f"limit must be an integer from 1 to {SEARCH_LIMIT_MAX}")
    return int(raw)


@bp.get("/instruments")
def instruments():
    """Instruments whose tradingsymbol or name starts with `q`; optional `exchange`, `segment`,
    `limit` (1-100, default 20). `q` may be "EXCHANGE:PREFIX". Only instruments of exchanges
    the JWT is entitled to are listed (ticker.web.entitlements)."""
    try:
        claims = verify(bearer_token(None, request.args, request.headers))
        entitled = entitlements_from(claims, current_app.config["JWT_ENTITLEMENTS_CLAIM"]).exchanges
    except ClientError as exc:
        return client_error(exc, http_status(exc))
    try:
        q = request.args.get("q", "").strip()
        if not q or len(q) > MAX_QUERY_CHARS:
            raise ClientError(errors.BAD_REQUEST, f"q is required, at most {MAX_QUERY_CHARS} characters")
        limit = _limit()
    except ClientError as exc:
        return client_error(exc, 400)
    with session_for(current_app.config["DATABASE_URL"]) as session:
        found = search(session, q, request.args.get("exchange") or None, request.args.get("segment") or None, limit,
                       entitled)
    return jsonify({"q": q, "count": len(found), "instruments": found})
