"""The Gemini provider's settings and key, read from an environment passed in (pure: no os.environ here)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from batcher.errors import ConfigError

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com"
API_VERSIONS = ("v1beta", "v1")  # both serve generateContent; the reference pages use v1beta
KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")  # in this order, as Google's own clients read them
BASE_URL_ENVS = ("GEMINI_BASE_URL", "GOOGLE_GEMINI_BASE_URL")  # ours, then the google-genai SDK's


@dataclass(frozen=True)
class GeminiSettings:
    base_url: str = DEFAULT_BASE_URL
    api_version: str = "v1beta"
    connect_timeout_s: float = 10.0
    # One call lasts the whole generation (tens of seconds, a minute at worst): the read must outlast it.
    read_timeout_s: float = 120.0
    total_timeout_s: float = 180.0
    # 10 req/s with 8 s generations keeps ~80 calls open at once: the pool must not be what paces the run.
    max_connections: int = 256
    max_reply_bytes: int = 64 << 20  # a reply holds one base64 image of 1-2 MB (4K: more); far past it is not a reply
    max_image_bytes: int = 40 << 20  # an image fetched from a URL

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"GEMINI_BASE_URL must be an http(s) URL, not {self.base_url!r}")
        if self.api_version not in API_VERSIONS:
            raise ConfigError(f"GEMINI_API_VERSION must be one of {', '.join(API_VERSIONS)}, not {self.api_version!r}")
        if self.max_connections < 1:
            raise ConfigError("the Gemini connection limit must be at least 1")
        if min(self.connect_timeout_s, self.read_timeout_s, self.total_timeout_s) <= 0:
            raise ConfigError("the Gemini timeouts must be positive")
        if self.max_reply_bytes < 1 or self.max_image_bytes < 1:
            raise ConfigError("the Gemini size caps must be positive")


def gemini_settings(env: Mapping[str, str], base_url: str | None = None) -> GeminiSettings:
    """Settings from `env` (GEMINI_BASE_URL, else GOOGLE_GEMINI_BASE_URL, and GEMINI_API_VERSION); `base_url` (an
    option) wins over the env."""
    url = base_url or DEFAULT_BASE_URL
    for name in () if base_url else BASE_URL_ENVS:
        if given := env.get(name, "").strip():
            if not given.startswith(("http://", "https://")):
                raise ConfigError(f"{name} must be an http(s) URL, not {given!r}")
            url = given
            break
    version = env.get("GEMINI_API_VERSION", "").strip() or "v1beta"
    return GeminiSettings(base_url=url, api_version=version)


def gemini_api_key(env: Mapping[str, str]) -> str:
    """The key from GEMINI_API_KEY, else GOOGLE_API_KEY; a ConfigError naming both when neither is set."""
    for name in KEY_ENVS:
        key = env.get(name, "").strip()
        if key:
            return key
    raise ConfigError(
        "no Gemini API key: set GEMINI_API_KEY (or GOOGLE_API_KEY), or add --emulate to rehearse against the "
        "built-in emulator"
    )
