"""Kite secrets at rest: Fernet encryption with rotatable keys.

`SECRETS_KEYS` holds comma-separated Fernet keys (`Fernet.generate_key()`); the first encrypts,
every one decrypts, so a key is rotated by prepending a new one (`rotate` re-encrypts a stored
value under it; the old key can go once nothing needs it).
Without configured keys, development and test runs derive one key from SECRET_KEY. That is for
development only: production refuses to start encrypting without SECRETS_KEYS.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app, has_app_context

from ticker.config import Config


class SecretError(RuntimeError):
    """A stored secret cannot be decrypted (wrong or rotated-away key, or corrupt text)."""


def _derived_key(secret_key: str) -> bytes:
    digest = hashlib.sha256(f"ticker-secrets:{secret_key}".encode()).digest()
    return base64.urlsafe_b64encode(digest)


def cipher_for(keys: list[str], env: str, secret_key: str) -> MultiFernet:
    """The cipher for a configuration's keys; raises SecretError when production has none."""
    if keys:
        return MultiFernet([Fernet(key.encode()) for key in keys])
    if env == "production":
        raise SecretError("SECRETS_KEYS is not configured: refusing to store Kite secrets")
    return MultiFernet([Fernet(_derived_key(secret_key))])


def _cipher() -> MultiFernet:
    config = current_app.config if has_app_context() else vars(Config)
    return cipher_for(config["SECRETS_KEYS"], config["ENV"], config["SECRET_KEY"])


def encrypt(plaintext: str) -> str:
    """The ciphertext (URL-safe text) of `plaintext` under the first configured key."""
    return _cipher().encrypt(plaintext.encode()).decode()


def rotate(ciphertext: str) -> str:
    """`ciphertext` re-encrypted under the first key (for key rotation)."""
    try:
        return _cipher().rotate(ciphertext.encode()).decode()
    except InvalidToken as exc:
        raise SecretError("cannot re-encrypt a stored Kite secret: no configured key opens it") from exc


def decrypt(ciphertext: str) -> str:
    """The plaintext; SecretError if no configured key opens it."""
    try:
        return _cipher().decrypt(ciphertext.encode()).decode()
    except (InvalidToken, ValueError) as exc:
        raise SecretError(
            "cannot decrypt a stored Kite secret: SECRETS_KEYS does not hold the key it was "
            "encrypted with (or the stored value is corrupt)"
        ) from exc
