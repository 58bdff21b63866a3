"""Vertex AI online (``publishers/google/models/M:generateContent``) as a Provider: the Gemini API's call and reply
(google_online.py) under a Cloud project, with Google Cloud credentials, or in express mode with an API key.

Settings are read as Google's own SDK reads them: GOOGLE_CLOUD_PROJECT, GOOGLE_CLOUD_LOCATION (default
`global`; a region is served by `https://L-aiplatform.googleapis.com`), GOOGLE_VERTEX_BASE_URL (the host, over
both). Credentials are Application Default Credentials through google-auth (GOOGLE_APPLICATION_CREDENTIALS naming
a service-account key file, gcloud's user credentials, the metadata server on Google's machines): a bearer token
reused until close to its expiry (auth.BearerToken). With no project and GOOGLE_API_KEY set: express mode, the key
in x-goog-api-key to `/v1/publishers/google/models/M:generateContent`.

What each reply proves, beyond the Gemini API's table (gemini.py), which holds for the rest:

| reply                                           | outcome                                       | billed |
| ----------------------------------------------- | --------------------------------------------- | ------ |
| 401 UNAUTHENTICATED (token expired or unknown)  | the token is fetched again and the request    | no     |
|                                                 | sent once more; a second 401: AuthRejected    |        |
| 403 PERMISSION_DENIED (wrong project, API off)  | AuthRejected naming the project: exit 2       | no     |
| 429 RESOURCE_EXHAUSTED (Dynamic Shared Quota)   | RateLimited after a jittered, growing backoff | no     |

Dynamic Shared Quota is capacity shared by every customer: no per-project or per-day quota, no RetryInfo, no
Retry-After. So a 429 is waited out with truncated exponential backoff and full jitter (Google's advice), and the
adaptive rate, hearing of it, finds the pace; nothing waits for a quota day.

A credentials file that is missing, not JSON or refused by the token endpoint stops the run (exit 2) when the
provider is entered, before any request is sent.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from batcher.errors import ConfigError
from batcher.providers.auth import ApiKey, BearerToken, Credential, CredentialRefused, CredentialUnavailable, Token
from batcher.providers.base import AuthRejected, RateLimited, SubmitOutcome
from batcher.providers.google_online import Call, GoogleOnline
from batcher.providers.google_wire import KEY_HEADER, api_error
from batcher.ratelimit import RateGate

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
GLOBAL_HOST = "https://aiplatform.googleapis.com"
CREDENTIALS_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
KEY_ENV = "GOOGLE_API_KEY"
DSQ_BASE_S, DSQ_CAP_S = 1.0, 32.0  # truncated exponential backoff after Dynamic Shared Quota 429s, seconds


@dataclass(frozen=True)
class VertexSettings:
    """Where Vertex AI is and how long its calls may take (as the Gemini API's: one call is one generation)."""

    project: str | None  # None: express mode
    location: str = "global"
    base_url: str | None = None  # GOOGLE_VERTEX_BASE_URL: over the location's host
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    total_timeout_s: float = 180.0
    max_connections: int = 256
    max_reply_bytes: int = 64 << 20
    max_image_bytes: int = 40 << 20

    @property
    def host(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return GLOBAL_HOST if self.location == "global" else f"https://{self.location}-aiplatform.googleapis.com"

    def url(self, model: str) -> str:
        """generateContent of `model`: under the project and location, or express mode's publisher path."""
        path = f"publishers/google/models/{quote(model, safe='')}:generateContent"
        if self.project is None:
            return f"{self.host}/v1/{path}"
        return f"{self.host}/v1/projects/{quote(self.project, safe='')}/locations/{self.location}/{path}"


def vertex_settings(env: Mapping[str, str]) -> VertexSettings:
    """Settings from `env`; the project may still come from the credentials (`adc`)."""
    base_url = env.get("GOOGLE_VERTEX_BASE_URL", "").strip() or None
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"GOOGLE_VERTEX_BASE_URL must be an http(s) URL, not {base_url!r}")
    location = env.get("GOOGLE_CLOUD_LOCATION", "").strip() or "global"
    return VertexSettings(project=env.get("GOOGLE_CLOUD_PROJECT", "").strip() or None, location=location,
                          base_url=base_url)  # fmt: skip


def vertex_credential(env: Mapping[str, str], settings: VertexSettings) -> tuple[VertexSettings, Credential]:
    """Express mode's key when there is no project and GOOGLE_API_KEY is set; else Application Default
    Credentials (the project from them when GOOGLE_CLOUD_PROJECT is not set)."""
    key = env.get(KEY_ENV, "").strip()
    if settings.project is None and key:
        return settings, ApiKey(KEY_HEADER, key, f"{KEY_ENV} (Vertex AI express mode)")
    creds, project, hint = _adc(env)
    project = settings.project or project
    if not project:
        raise ConfigError("Vertex AI needs a project: set GOOGLE_CLOUD_PROJECT (or GOOGLE_API_KEY alone for "
                          "express mode)")  # fmt: skip
    settings = VertexSettings(project, settings.location, settings.base_url)
    return settings, BearerToken(lambda: _fetch(creds), hint)


def _adc(env: Mapping[str, str]) -> tuple[Any, str | None, str]:
    """google-auth's credentials, their project and the hint naming them (never the secret)."""
    try:
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
    except ImportError:
        raise ConfigError("Vertex AI needs google-auth: pip install 'batcher-images[vertex]'") from None
    path = env.get(CREDENTIALS_ENV, "").strip()
    try:
        if path:
            creds, project = _from_file(path)
        else:
            creds, project = google.auth.default(scopes=[CLOUD_PLATFORM])
    except (DefaultCredentialsError, ValueError) as e:
        where = f"{CREDENTIALS_ENV} ({path})" if path else "Application Default Credentials"
        raise ConfigError(f"{where} cannot be used for Vertex AI: {_first(e)}") from None
    email = getattr(creds, "service_account_email", None)
    who = f"service account {email}" if isinstance(email, str) and "@" in email else type(creds).__name__
    hint = f"{CREDENTIALS_ENV} ({path}; {who})" if path else f"Application Default Credentials ({who})"
    return creds, project if isinstance(project, str) else None, hint


def _from_file(path: str) -> tuple[Any, str | None]:
    """A service-account key or gcloud's user credentials from a JSON file. Only these two types are loaded, as
    google-auth advises for files from the environment (an external account's file can name any URL to call)."""
    from google.oauth2 import credentials as user
    from google.oauth2 import service_account

    try:
        with open(path, encoding="utf-8") as f:
            info = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{CREDENTIALS_ENV} names {path}, which does not exist") from None
    except OSError as e:
        raise ConfigError(f"{CREDENTIALS_ENV} ({path}) cannot be read: {e.strerror or e}") from None
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"{CREDENTIALS_ENV} ({path}) is not JSON: not a credentials file") from None
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        sa = service_account.Credentials.from_service_account_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
        return sa, info.get("project_id")
    if kind == "authorized_user":
        creds = user.Credentials.from_authorized_user_info(info, scopes=[CLOUD_PLATFORM])  # type: ignore[no-untyped-call]
        return creds, info.get("quota_project_id")
    raise ConfigError(f"{CREDENTIALS_ENV} ({path}) is not a service-account key or gcloud user credentials "
                      f"(type {kind!r})")  # fmt: skip


def _fetch(creds: Any) -> Token:
    """One token from google-auth (blocking: BearerToken runs it in a thread)."""
    from google.auth.exceptions import RefreshError, TransportError
    from google.auth.transport.requests import Request

    try:
        creds.refresh(Request())
    except RefreshError as e:
        raise CredentialRefused(f"the token endpoint refused the credentials ({_first(e)})") from None
    except TransportError as e:
        raise CredentialUnavailable(f"cannot reach the token endpoint ({_first(e)})") from None
    expiry = creds.expiry
    at = expiry.replace(tzinfo=dt.UTC).timestamp() if isinstance(expiry, dt.datetime) else None
    return Token(str(creds.token), at)


def _first(e: Exception) -> str:
    text = str(e.args[0]) if e.args else type(e).__name__
    return text.splitlines()[0][:200]


class VertexProvider(GoogleOnline[VertexSettings]):
    """Vertex AI online: one aiohttp session; every request first passes the shared rate gate."""

    name = "vertex"
    label = "Vertex AI"

    def __init__(self, settings: VertexSettings, credential: Credential, gate: RateGate, *,
                 now: Callable[[], float] = time.time, rng: random.Random | None = None) -> None:  # fmt: skip
        super().__init__(settings, credential, gate, now=now)
        self._rng = rng or random.Random()
        self._strikes = 0  # Dynamic Shared Quota 429s in a row

    def __repr__(self) -> str:
        return f"VertexProvider({self.settings.host!r}, project={self.settings.project!r})"

    def _url(self, model: str) -> str:
        return self.settings.url(model)

    def _rate_limited(self, doc: dict[str, Any] | None, retry_after: float | None, call: Call) -> SubmitOutcome:
        error = api_error(doc)
        message = self._scrub(str(error.get("message") or "")) if error else ""
        first_line = message.splitlines()[0] if message else "HTTP 429"
        self._strikes += 1
        ceiling = min(DSQ_CAP_S, DSQ_BASE_S * 2 ** min(self._strikes - 1, 10))
        wait = retry_after if retry_after is not None else self._rng.uniform(ceiling / 2, ceiling)
        self.gate.rate_limited(wait)
        msg = f"Dynamic Shared Quota: {first_line}"
        return RateLimited(call("rate_limited", msg), msg, wait_s=wait)

    def _refused(self, status: int | None, error: dict[str, Any] | None, call: Call) -> SubmitOutcome:
        self._strikes = 0
        if status == 403:
            project = self.settings.project or "none (express mode)"
            msg = f"{self._what(status, error)} (project {project})"
            return AuthRejected(call("auth", msg), msg)
        return super()._refused(status, error, call)

    def _generated(self, doc: dict[str, Any], call: Call) -> SubmitOutcome:
        self._strikes = 0
        return super()._generated(doc, call)
