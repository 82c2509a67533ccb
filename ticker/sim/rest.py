"""Kite Connect's REST API, as much of it as the ticker service uses.

`GET /instruments`, `GET /instruments/{exchange}` (CSV), `GET /connect/login` (instant login,
302 to the redirect URL with a request token), `POST /session/token`,
`POST /session/refresh_token`, `DELETE /session/token`, `GET /user/profile`. Responses use
Kite's envelope, so `kiteconnect.KiteConnect` pointed here raises its usual exceptions.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qsl

from aiohttp import web
from yarl import URL

from ticker.sim.errors import KiteError, error_response, input_error, success_response
from ticker.sim.state import SIM

routes = web.RouteTableDef()
EXCHANGES = ("NSE", "BSE", "NFO", "BFO", "CDS", "BCD", "MCX")


@web.middleware
async def kite_errors(request: web.Request, handler) -> web.StreamResponse:
    """Render KiteError and unknown routes as Kite's JSON error envelope."""
    try:
        return await handler(request)
    except KiteError as error:
        return error.response()
    except web.HTTPNotFound:
        return error_response(404, "GeneralException", f"Route not found: {request.path}")
    except web.HTTPMethodNotAllowed:
        return error_response(405, "GeneralException", f"Method not allowed: {request.method}")


def _csv(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/csv")


@routes.get("/instruments")
async def instruments(request: web.Request) -> web.Response:
    """The whole instruments dump (no login needed, as on Kite)."""
    return _csv(request.app[SIM].instruments_csv())


@routes.get("/instruments/{exchange}")
async def instruments_of_exchange(request: web.Request) -> web.Response:
    """One exchange's instruments."""
    exchange = request.match_info["exchange"].upper()
    if exchange not in EXCHANGES:
        raise input_error(f"Invalid exchange {exchange!r}; expected one of {', '.join(EXCHANGES)}.")
    return _csv(request.app[SIM].instruments_csv(exchange))


@routes.get("/connect/login")
async def login(request: web.Request) -> web.Response:
    """The user 'logs in' at once: redirect to the redirect URL with a single-use request token,
    and, as Kite does, the parameters of the URL-encoded query string `redirect_params`."""
    sim = request.app[SIM]
    request_token = sim.accounts.issue_request_token(request.query.get("api_key", ""))
    passed = parse_qsl(request.query.get("redirect_params", ""))
    target = URL(sim.config.redirect_url).update_query(
        passed + [("request_token", request_token), ("action", "login"), ("type", "login"), ("status", "success")])
    raise web.HTTPFound(str(target))


async def _form(request: web.Request, *names: str) -> list[str]:
    form = await request.post()
    missing = [name for name in names if not form.get(name)]
    if missing:
        raise input_error(f"Missing {', '.join(missing)}.")
    return [str(form[name]) for name in names]


@routes.post("/session/token")
async def create_session(request: web.Request) -> web.Response:
    """Exchange a request token for an access token (`KiteConnect.generate_session`)."""
    api_key, request_token, checksum = await _form(request, "api_key", "request_token", "checksum")
    session = request.app[SIM].accounts.create_session(api_key, request_token, checksum, time.time())
    return success_response(session)


@routes.post("/session/refresh_token")
async def renew_session(request: web.Request) -> web.Response:
    """A new access token for a refresh token (`KiteConnect.renew_access_token`)."""
    api_key, refresh_token, checksum = await _form(request, "api_key", "refresh_token", "checksum")
    session = request.app[SIM].accounts.renew(api_key, refresh_token, checksum, time.time())
    return success_response(session)


@routes.delete("/session/token")
async def invalidate_session(request: web.Request) -> web.Response:
    """Invalidate an access or refresh token; ticker connections using it are closed."""
    sim = request.app[SIM]
    query = request.query
    sim.accounts.invalidate(query.get("api_key", ""), query.get("access_token", ""),
                            query.get("refresh_token", ""))
    sim.hub.close_unauthorised(time.time())
    return success_response(True)


@routes.get("/user/profile")
async def profile(request: web.Request) -> web.Response:
    """The user's profile; 403 TokenException without a live `Authorization: token key:token`."""
    accounts = request.app[SIM].accounts
    account = accounts.authenticate(request.headers.get("Authorization", ""), time.time())
    return success_response(accounts.profile(account))
