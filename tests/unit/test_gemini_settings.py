"""The Gemini provider's pure parts: settings and key from an env mapping, the request body, the quota day."""

from __future__ import annotations

import datetime as dt

import pytest

from batcher.errors import ConfigError
from batcher.providers.base import Request
from batcher.providers.gemini import aspect_ratio, image_tokens, next_quota_day, request_body
from batcher.providers.gemini_settings import DEFAULT_BASE_URL, GeminiSettings, gemini_api_key, gemini_settings


def utc(year: int, month: int, day: int, hour: int, minute: int) -> float:
    return dt.datetime(year, month, day, hour, minute, tzinfo=dt.UTC).timestamp()


def test_the_key_comes_from_gemini_then_google() -> None:
    assert gemini_api_key({"GEMINI_API_KEY": " g ", "GOOGLE_API_KEY": "o"}) == "g"
    assert gemini_api_key({"GEMINI_API_KEY": "", "GOOGLE_API_KEY": "o"}) == "o"
    with pytest.raises(ConfigError, match=r"GEMINI_API_KEY.*GOOGLE_API_KEY"):
        gemini_api_key({})


def test_settings_from_the_env() -> None:
    default = gemini_settings({})
    assert default.base_url == DEFAULT_BASE_URL and default.api_version == "v1beta"
    assert default.read_timeout_s >= 120 and default.total_timeout_s >= 180 and default.max_connections >= 256
    env = {"GEMINI_BASE_URL": "http://127.0.0.1:9", "GEMINI_API_VERSION": "v1"}
    assert gemini_settings(env) == GeminiSettings(base_url="http://127.0.0.1:9", api_version="v1")
    assert gemini_settings(env, base_url="https://other").base_url == "https://other"
    with pytest.raises(ConfigError, match="GEMINI_BASE_URL"):
        gemini_settings({"GEMINI_BASE_URL": "ftp://x"})
    with pytest.raises(ConfigError, match="GEMINI_API_VERSION"):
        gemini_settings({"GEMINI_API_VERSION": "v2"})


def test_the_sdk_variable_google_gemini_base_url_is_honoured_beside_gemini_base_url() -> None:
    """google-genai reads GOOGLE_GEMINI_BASE_URL: a user who set it for the SDK reaches the same endpoint."""
    assert gemini_settings({"GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9"}).base_url == "http://127.0.0.1:9"
    both = {"GEMINI_BASE_URL": "http://127.0.0.1:8", "GOOGLE_GEMINI_BASE_URL": "http://127.0.0.1:9"}
    assert gemini_settings(both).base_url == "http://127.0.0.1:8"  # the project's own variable first
    with pytest.raises(ConfigError, match=r"^GOOGLE_GEMINI_BASE_URL must be an http"):
        gemini_settings({"GOOGLE_GEMINI_BASE_URL": "ftp://x"})


def test_the_request_body() -> None:
    body = request_body(Request("m", "a cat", "2K", "16x9", ("data:image/jpeg;base64,AAAA",)))
    assert body == {
        "contents": [
            {"role": "user", "parts": [{"text": "a cat"}, {"inlineData": {"mimeType": "image/jpeg", "data": "AAAA"}}]}
        ],
        "generationConfig": {
            "responseModalities": ["IMAGE"],
            "imageConfig": {"aspectRatio": "16:9", "imageSize": "2K"},
        },
    }
    assert aspect_ratio("21x9") == "21:9" and aspect_ratio("1:8") == "1:8"


@pytest.mark.parametrize(
    ("now", "midnight"),
    [
        (utc(2026, 12, 2, 20, 0), utc(2026, 12, 3, 8, 0)),  # PST: UTC-8
        (utc(2026, 12, 3, 7, 59), utc(2026, 12, 3, 8, 0)),  # 23:59 Pacific
        (utc(2026, 12, 3, 8, 0), utc(2026, 12, 4, 8, 0)),  # midnight itself: the next one
        (utc(2026, 7, 1, 12, 0), utc(2026, 7, 2, 7, 0)),  # PDT: UTC-7
        (utc(2026, 3, 8, 9, 0), utc(2026, 3, 9, 7, 0)),  # the day clocks go forward is 23 hours long
    ],
)
def test_the_quota_day_ends_at_midnight_pacific(now: float, midnight: float) -> None:
    assert next_quota_day(now) == midnight


def test_image_tokens_are_the_image_modalitys_count() -> None:
    usage = {
        "candidatesTokensDetails": [{"modality": "TEXT", "tokenCount": 5}, {"modality": "IMAGE", "tokenCount": 1290}]
    }
    assert image_tokens(usage) == 1290
    assert image_tokens({}) is None
