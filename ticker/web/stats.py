"""`GET /ws/stats`: cluster-wide connection, subscription and delivery figures, for admins.

Each replica publishes its own figures to Redis every heartbeat; any replica answers for all.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from ticker.web import auth, errors
from ticker.web.errors import ClientError
from ticker.web.replica import cluster_stats, replica

bp = Blueprint("stats", __name__)


@bp.get("/ws/stats")
def ws_stats():
    """Needs a JWT with `admin: true` (`flask jwt mint --admin`): 401 without a valid one,
    403 for a valid one without the claim (`{code, message}`, as every HTTP error)."""
    try:
        claims = auth.verify(auth.bearer_token(None, request.args, request.headers))
    except ClientError as exc:
        return jsonify(exc.as_dict()), auth.http_status(exc)
    if claims.get("admin") is not True:
        return jsonify({"code": errors.ADMIN_REQUIRED, "message": "an admin token is required"}), 403
    state = replica()
    state.publish_stats()  # this replica's figures are current, the others' at most a heartbeat old
    return jsonify({"answered_by": state.id, **cluster_stats(state.redis)})
