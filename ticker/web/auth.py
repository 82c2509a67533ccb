"""JWT verification for Socket.IO connections and HTTP, and development tokens.

Tokens are verified with flask-jwt-extended against a public key or a JWKS URL (keys picked
by `kid`, fetched and cached by ticker.web.jwks), with the audience, issuer, algorithm
allow-list and clock-skew leeway (`JWT_DECODE_LEEWAY`, applied by PyJWT to `exp`, `nbf` and
`iat` alike) from Config. The contract, with every refusal code: docs/API.md, "Authentication".
The private key exists only for minting development tokens.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import jwt as pyjwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, current_app
from flask_jwt_extended import create_access_token, decode_token
from flask_jwt_extended.exceptions import JWTDecodeError

from ticker.extensions import jwt
from ticker.web import errors
from ticker.web.errors import ClientError
from ticker.web.jwks import KeySet, KeysUnavailable, UnknownKey

log = logging.getLogger(__name__)

MAX_TOKEN_BYTES = 8192  # far beyond any real token; a bigger one is refused before any decoding


def init_keys(app: Flask) -> None:
    """In development with no key configured, use (and create once) a local key pair."""
    config = app.config
    if config["JWT_PUBLIC_KEY"] or config["JWT_JWKS_URL"] or config["ENV"] != "development":
        return
    private, public = dev_key_paths(Path(config["JWT_DEV_KEY_DIR"]))
    if not private.exists():
        write_key_pair(private, public)
        log.warning("created a development JWT key pair in %s", private.parent)
    config["JWT_PRIVATE_KEY"] = private.read_text()
    config["JWT_PUBLIC_KEY"] = public.read_text()


def dev_key_paths(directory: Path) -> tuple[Path, Path]:
    return directory / "jwt-dev-private.pem", directory / "jwt-dev-public.pem"


def write_key_pair(private_path: Path, public_path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    private_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    private_path.chmod(0o600)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


_key_sets: dict[str, KeySet] = {}


def key_set(config: Any) -> KeySet | None:
    """The process's key set of the configured JWKS URL (one per URL), or None without one."""
    url = config["JWT_JWKS_URL"]
    if not url:
        return None
    if url not in _key_sets:
        _key_sets[url] = KeySet(url, max_age_secs=config["JWT_JWKS_MAX_AGE_SECS"],
                                min_age_secs=config["JWT_JWKS_MIN_AGE_SECS"],
                                stale_secs=config["JWT_JWKS_STALE_SECS"], timeout_secs=config["JWT_JWKS_TIMEOUT_SECS"])
    return _key_sets[url]


@lru_cache(maxsize=4)
def _public_key(pem: str) -> Any:
    # Parsed once: PyJWT would parse the PEM text again for every token it verifies.
    return serialization.load_pem_public_key(pem.encode())


@jwt.decode_key_loader
def _decode_key(header: dict, _payload: dict) -> Any:
    keys = key_set(current_app.config)
    if keys is None:
        pem = current_app.config["JWT_PUBLIC_KEY"]
        return _public_key(pem) if isinstance(pem, str) and pem.startswith("-----BEGIN PUBLIC KEY") else pem
    return keys.key_for(header.get("kid")).key


def bearer_token(auth: Any, args: Any, headers: Any) -> str | None:
    """The JWT from Socket.IO `auth: {token}`, `?token=` or `Authorization: Bearer`."""
    if isinstance(auth, dict) and isinstance(auth.get("token"), str):
        return auth["token"]
    if args.get("token"):
        return args["token"]
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


_FAILURES = [
    (pyjwt.ExpiredSignatureError, errors.TOKEN_EXPIRED, "token has expired"),
    (pyjwt.ImmatureSignatureError, errors.TOKEN_NOT_YET_VALID, "token is not valid yet (iat or nbf in the future)"),
    (pyjwt.InvalidAudienceError, errors.TOKEN_AUDIENCE, "token is not for this audience"),
    (pyjwt.InvalidIssuerError, errors.TOKEN_ISSUER, "token is not from a trusted issuer"),
    (pyjwt.InvalidAlgorithmError, errors.TOKEN_INVALID, "token algorithm is not allowed"),
    (pyjwt.InvalidSignatureError, errors.TOKEN_INVALID, "token signature does not verify"),
]


def verify(token: str | None) -> dict[str, Any]:
    """The token's claims, or ClientError saying exactly why it is refused (the codes of
    docs/API.md, "Authentication"; `auth_unavailable` is the server's trouble, not the token's)."""
    if not token:
        raise ClientError(errors.AUTH_REQUIRED, "a JWT is required: auth: {token}, ?token= or Authorization: Bearer")
    if len(token) > MAX_TOKEN_BYTES:
        raise ClientError(errors.TOKEN_TOO_LARGE, f"token is longer than {MAX_TOKEN_BYTES} bytes")
    if not token.isascii():  # a compact JWT is base64url and dots: one character, one byte
        raise ClientError(errors.TOKEN_INVALID, "token is not valid: a JWT is ASCII (base64url parts and dots)")
    try:
        claims = decode_token(token)
    except UnknownKey as exc:
        raise ClientError(errors.TOKEN_INVALID, f"token is not valid: {exc}") from exc
    except KeysUnavailable as exc:
        raise ClientError(errors.AUTH_UNAVAILABLE, "the server cannot verify tokens now (its issuer's keys are "
                                                   "unavailable): retry with backoff") from exc
    except pyjwt.PyJWTError as exc:
        for kind, code, message in _FAILURES:
            if isinstance(exc, kind):
                raise ClientError(code, message) from exc
        raise ClientError(errors.TOKEN_INVALID, f"token is not valid: {exc}") from exc
    except (JWTDecodeError, ValueError) as exc:
        raise ClientError(errors.TOKEN_INVALID, f"token is not valid: {exc}") from exc
    if "exp" not in claims and current_app.config["JWT_REQUIRE_EXP"]:
        raise ClientError(errors.TOKEN_EXP_REQUIRED, "token has no `exp` claim: this server requires tokens that "
                                                        "expire")
    if not isinstance(claims.get("sub"), str) or not claims["sub"].strip():
        raise ClientError(errors.TOKEN_INVALID, "token is not valid: `sub` must name the user (a non-empty string)")
    return claims


def http_status(exc: ClientError) -> int:
    """The HTTP status of a refused token: 503 when the server cannot verify, else 401."""
    return 503 if exc.code == errors.AUTH_UNAVAILABLE else 401


def mint(identity: str, ttl: timedelta, admin: bool = False, exchanges: list[str] | None = None) -> str:
    """A token signed with the configured private key (development and tests); `exchanges`,
    when given, is its entitlements claim (JWT_ENTITLEMENTS_CLAIM). Raises RuntimeError with no
    private key configured."""
    if not current_app.config.get("JWT_PRIVATE_KEY"):
        raise RuntimeError("no JWT private key configured: set JWT_PRIVATE_KEY(_FILE) to mint tokens")
    claims: dict[str, Any] = {"admin": admin}
    if exchanges is not None:
        claims[current_app.config["JWT_ENTITLEMENTS_CLAIM"]] = exchanges
    return create_access_token(identity=identity, expires_delta=ttl, additional_claims=claims)
