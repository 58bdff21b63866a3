"""Google's OAuth2 token endpoint for service-account keys (RFC 7523's JWT bearer grant), and the tokens it issues.

A client signs a JWT with its key file's private key (RS256; ``iss`` the service account's email, ``aud``
Google's token URL, ``scope``, ``iat`` and ``exp`` at most an hour apart) and posts it as the ``assertion`` of
grant type ``urn:ietf:params:oauth:grant-type:jwt-bearer``. The signature is checked against the public keys
registered for that email, as Google checks it against the account's keys. A JWT's times are the client's wall
clock, so they are checked against ours; an issued token's life runs on the emulator's clock, so a test can make
it expire by advancing that clock. Errors are the OAuth2 body Google answers, ``{"error", "error_description"}``.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
MAX_JWT_LIFE_S = 3600  # Google refuses assertions meant to live longer than an hour
CLOCK_SKEW_S = 300  # our choice: how far a client's clock may run ahead of ours
RSA_BITS = 2048


class TokenRefused(ValueError):
    """An OAuth2 error: `error` is its code (invalid_grant ...), the message its description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error


@dataclass(frozen=True, slots=True)
class IssuedToken:
    email: str
    expires_at: float  # emulator clock


def _b64url(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def new_key_file(email: str, token_uri: str, project: str) -> tuple[dict[str, str], bytes]:
    """A service-account key file (as Google's console downloads it) and the PEM of its public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    info = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": secrets.token_hex(20),
        "private_key": private_pem,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    return info, public_pem


class TokenIssuer:
    """Registered service-account keys, and the access tokens issued against them."""

    def __init__(self) -> None:
        self._keys: dict[str, list[rsa.RSAPublicKey]] = {}
        self._tokens: dict[str, IssuedToken] = {}

    def register(self, email: str, public_pem: bytes | str) -> None:
        """Let `email` sign with the private half of this public key (PEM), as adding a key to an account does."""
        raw = public_pem.encode() if isinstance(public_pem, str) else public_pem
        key = serialization.load_pem_public_key(raw)
        if not isinstance(key, rsa.RSAPublicKey):
            raise ValueError("a service-account key is an RSA key")
        self._keys.setdefault(email, []).append(key)

    def forget_tokens(self) -> None:
        self._tokens.clear()

    def grant(self, form: dict[str, str], now: float, lifetime_s: float) -> tuple[str, IssuedToken]:
        """A token for a valid JWT-bearer grant; raises TokenRefused."""
        grant_type = form.get("grant_type", "")
        if grant_type != JWT_GRANT:
            raise TokenRefused("unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        claims = self._verified_claims(form.get("assertion", ""))
        token = "ya29.emu-" + secrets.token_urlsafe(32)
        issued = self._tokens[token] = IssuedToken(str(claims["iss"]), now + lifetime_s)
        return token, issued

    def check(self, token: str, now: float) -> str | None:
        """None if the token is good now; else why not: "unknown" or "expired"."""
        issued = self._tokens.get(token)
        if issued is None:
            return "unknown"
        return "expired" if now >= issued.expires_at else None

    def _verified_claims(self, assertion: str) -> dict[str, Any]:
        try:
            head_b64, body_b64, sig_b64 = assertion.split(".")
            header = json.loads(_b64url(head_b64))
            claims = json.loads(_b64url(body_b64))
            signature = _b64url(sig_b64)
        except (ValueError, binascii.Error):
            raise TokenRefused("invalid_request", "Invalid JWT: the assertion is not a signed JWT.") from None
        if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "RS256":
            raise TokenRefused("invalid_grant", "Invalid JWT Signature.")
        keys = self._keys.get(str(claims.get("iss", "")))
        if not keys:
            raise TokenRefused("invalid_grant", "Invalid grant: account not found")
        signed = f"{head_b64}.{body_b64}".encode()
        if not any(_verifies(key, signature, signed) for key in keys):
            raise TokenRefused("invalid_grant", "Invalid JWT Signature.")
        if claims.get("aud") != GOOGLE_TOKEN_URL:
            raise TokenRefused("invalid_grant", "Invalid JWT: Failed audience check.")
        _check_times(claims)
        if not str(claims.get("scope", "")).strip():
            raise TokenRefused("invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        return claims


def _verifies(key: rsa.RSAPublicKey, signature: bytes, signed: bytes) -> bool:
    try:
        key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _check_times(claims: dict[str, Any]) -> None:
    """A short-lived JWT, issued now by the wall clock (the client's clock, not the emulator's)."""
    iat, exp = claims.get("iat"), claims.get("exp")
    wall = time.time()
    good = (
        isinstance(iat, int)
        and isinstance(exp, int)
        and 0 < exp - iat <= MAX_JWT_LIFE_S
        and iat <= wall + CLOCK_SKEW_S
        and exp > wall
    )
    if not good:
        raise TokenRefused(
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
            "Check your iat and exp values in the JWT claim.",
        )
