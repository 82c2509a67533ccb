"""The live page at `/`: paste a JWT (or, in development, get one), search instruments,
subscribe and watch a live board. Everything it loads is served by the app itself.

`POST /dev/token` mints a short-lived development JWT; it exists only when TICKER_ENV is
`development`, and answers 404 everywhere else.
"""

from __future__ import annotations

import re
import secrets
from datetime import timedelta

from flask import Blueprint, abort, current_app, jsonify, render_template, request

from ticker.web.auth import mint

bp = Blueprint("page", __name__, template_folder="templates", static_folder="static", static_url_path="/assets")

DEV_TOKEN_TTL = timedelta(hours=8)  # a working day of local development

# The page loads nothing from elsewhere; the Socket.IO connection goes back to this origin.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; "
    "style-src 'self'; script-src 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def dev_tokens_enabled() -> bool:
    return current_app.config["ENV"] == "development" and bool(current_app.config.get("JWT_PRIVATE_KEY"))


@bp.get("/")
def index():
    response = current_app.make_response(render_template("index.html", dev_tokens=dev_tokens_enabled()))
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/favicon.ico")
def favicon():
    """The page's icon where browsers and tools look for it first (the page links the same SVG)."""
    return bp.send_static_file("favicon.svg")


DEV_USER = re.compile(r"dev-[0-9a-f]{6}")  # the throwaway users this endpoint makes, and no other


@bp.post("/dev/token")
def dev_token():
    """A development JWT, `{token, user, expires_in}` (seconds): for a new throwaway user, or,
    with a JSON body `{"user": "dev-…"}`, a fresh one for that user (the page renews its token
    so; a JWT renewed on an open connection must name the same user). 400 for a user this
    endpoint did not make; 404 outside TICKER_ENV=development."""
    if not dev_tokens_enabled():
        abort(404)
    asked = (request.get_json(silent=True) or {}).get("user")
    if asked is not None and not (isinstance(asked, str) and DEV_USER.fullmatch(asked)):
        abort(400)
    user = asked or f"dev-{secrets.token_hex(3)}"
    return jsonify({"token": mint(user, DEV_TOKEN_TTL), "user": user, "expires_in": int(DEV_TOKEN_TTL.total_seconds())})
