"""Every provider by name: where its API is (from the environment, or an in-process emulator with `--emulate`),
its online client, its batch client (or none) and its settings for the run. The hint that names a credential
in messages is the credential's own (providers/auth.py), written once where the credential is made.

`connect`, `session`, the CLI and the runner ask here; nothing else chooses by a provider's name. What a provider
serves (models, sizes, input limits, prices) is the catalog's (batcher/catalog.py). Adding a provider is one
entry here, its modules under providers/, its table in the catalog and its docs page.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

from batcher.catalog import provider_facts
from batcher.config import ApiSettings, RunConfig, api_key, api_settings
from batcher.emulator import EmulatorConfig, Latency
from batcher.errors import ConfigError
from batcher.providers.base import BatchClient, Provider
from batcher.ratelimit import RateGate

REHEARSAL_BATCH_LATENCY = Latency("uniform", 3.0, 8.0)  # `--emulate --route batch`: from create to done, seconds
EMULATED_STAGING = "gs://batcher-staging/batches"  # `--emulate`: the Vertex emulator's own bucket for batch files


@dataclass(frozen=True)
class Endpoint:
    """Where a provider's API is: its base URL, the key (kept out of every record and message), the settings
    an emulator gives over the process's environment (its project, its key file, its Cloud Storage) and where a
    batch client that stages its files in object storage puts them (`staging`: the run's `batch: staging` or
    `--staging`, else an emulator's own bucket)."""

    provider: str
    base_url: str | None  # None: the provider's own default (or its environment variable)
    key: str
    env: Mapping[str, str] = field(default_factory=dict)
    staging: str | None = None  # gs://BUCKET/PREFIX

    def __repr__(self) -> str:  # the key never shows, not even in a traceback's locals
        return f"Endpoint(provider={self.provider!r}, base_url={self.base_url!r})"

    def environ(self) -> dict[str, str]:
        """The environment the provider reads its settings from: the process's, with the emulator's over it."""
        return {**os.environ, **self.env}


Emulated = Callable[[EmulatorConfig, bool], AbstractAsyncContextManager[Endpoint]]


@dataclass(frozen=True)
class Registered:
    """One provider, as the layers above use it."""

    name: str
    real: Callable[[], Endpoint]  # the API from the environment
    emulated: Emulated  # `--emulate`: an emulator on loopback for the run's life (`batch`: a rehearsal's pace)
    online: Callable[[Endpoint, RunConfig, RateGate], Provider]  # to be entered: it owns its HTTP session
    batch: Callable[[Endpoint, RateGate], BatchClient] | None = None  # to be entered; None: no batch mode
    api: Callable[[Endpoint], ApiSettings] = lambda where: ApiSettings()  # the run's LinkModel-style settings


# --- LinkModel --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _linkmodel_emulated(emulator: EmulatorConfig, batch: bool) -> AsyncIterator[Endpoint]:
    from batcher.emulator import Emulator  # the server, and aiohttp's web side with it: only for --emulate

    async with Emulator(emulator) as emu:
        yield Endpoint("linkmodel", emu.base_url, emu.api_key)


def _linkmodel_online(where: Endpoint, config: RunConfig, gate: RateGate) -> Provider:
    from batcher.providers.linkmodel import LinkModelProvider

    api = replace(config.api, base_url=where.base_url) if where.base_url else config.api
    if config.max_connections is not None:
        api = replace(api, max_connections=config.max_connections)
    return LinkModelProvider(api, where.key, gate)


LINKMODEL = Registered(
    "linkmodel",
    real=lambda: Endpoint("linkmodel", api_settings().base_url, api_key()),
    emulated=_linkmodel_emulated,
    online=_linkmodel_online,
    api=lambda where: api_settings(base_url=where.base_url),
)


# --- Gemini API -------------------------------------------------------------------------------------


def _gemini_real() -> Endpoint:
    from batcher.providers.gemini_settings import gemini_api_key, gemini_settings

    return Endpoint("gemini", gemini_settings(os.environ).base_url, gemini_api_key(os.environ))


@contextlib.asynccontextmanager
async def _gemini_emulated(emulator: EmulatorConfig, batch: bool) -> AsyncIterator[Endpoint]:
    from batcher.emulator.gemini.config import GeminiConfig  # the server: only for --emulate
    from batcher.emulator.gemini.server import GeminiEmulator

    config = GeminiConfig(latency=emulator.latency)
    if batch:  # a rehearsal's batches end within seconds, not the real service's minutes to hours
        config = config.replace(batch_latency=REHEARSAL_BATCH_LATENCY)
    async with GeminiEmulator(config) as gemini:
        yield Endpoint("gemini", gemini.origin, gemini.api_key)


def _gemini_online(where: Endpoint, config: RunConfig, gate: RateGate) -> Provider:
    from batcher.providers.gemini import GeminiProvider
    from batcher.providers.gemini_settings import gemini_settings

    settings = gemini_settings(where.environ(), base_url=where.base_url)
    if config.max_connections is not None:
        settings = replace(settings, max_connections=config.max_connections)
    return GeminiProvider(settings, where.key, gate)


def _gemini_batch(where: Endpoint, gate: RateGate) -> BatchClient:
    from batcher.providers.gemini_batch import GeminiBatchClient
    from batcher.providers.gemini_settings import gemini_settings

    return GeminiBatchClient(gemini_settings(where.environ(), base_url=where.base_url), where.key, gate)


GEMINI = Registered(
    "gemini",
    real=_gemini_real,
    emulated=_gemini_emulated,
    online=_gemini_online,
    batch=_gemini_batch,
)


# --- Vertex AI --------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _vertex_emulated(emulator: EmulatorConfig, batch: bool) -> AsyncIterator[Endpoint]:
    """The Vertex emulator with a service-account key file it issued, so the run goes through google-auth's
    whole token flow against the emulator's token endpoint."""
    from batcher.providers.vertex import CREDENTIALS_ENV
    from batcher.providers.vertex_batch import STORAGE_EMULATOR_ENV

    try:  # the server, which checks service-account JWTs with cryptography: only for --emulate
        from batcher.emulator.vertex.config import VertexConfig
        from batcher.emulator.vertex.server import VertexEmulator
    except ImportError:
        raise ConfigError(
            "the Vertex AI emulator needs the vertex extra: pip install 'batcher-images[vertex]'"
        ) from None

    config = VertexConfig(latency=emulator.latency)
    if batch:  # a rehearsal's jobs end within seconds, not the real service's minutes to hours
        config = config.replace(batch_latency=REHEARSAL_BATCH_LATENCY)
    with tempfile.TemporaryDirectory(prefix="batcher-vertex-") as tmp:
        async with VertexEmulator(config) as emu:
            key_file = emu.write_key_file(Path(tmp) / "service-account.json")
            # its own Cloud Storage, and a bucket in it for batch files, so a rehearsal needs no staging setting
            emu.add_bucket(EMULATED_STAGING.split("/")[2])
            env = {"GOOGLE_CLOUD_PROJECT": emu.project, "GOOGLE_CLOUD_LOCATION": "global",
                   "GOOGLE_VERTEX_BASE_URL": emu.origin, CREDENTIALS_ENV: str(key_file),
                   STORAGE_EMULATOR_ENV: emu.origin}  # fmt: skip
            yield Endpoint("vertex", emu.origin, "", env, EMULATED_STAGING)


def _vertex_online(where: Endpoint, config: RunConfig, gate: RateGate) -> Provider:
    from batcher.providers.vertex import VertexProvider, vertex_credential, vertex_settings

    env = where.environ()
    settings, credential = vertex_credential(env, vertex_settings(env))
    if config.max_connections is not None:
        settings = replace(settings, max_connections=config.max_connections)
    return VertexProvider(settings, credential, gate)


def _vertex_batch(where: Endpoint, gate: RateGate) -> BatchClient:
    from batcher.providers.vertex import vertex_credential, vertex_settings
    from batcher.providers.vertex_batch import VertexBatchClient, batch_settings

    env = where.environ()
    settings, credential = vertex_credential(env, vertex_settings(env))
    return VertexBatchClient(batch_settings(settings, credential, where.staging, env), credential, gate)


VERTEX = Registered(
    "vertex",
    real=lambda: Endpoint("vertex", None, ""),  # settings and credentials are read when the client opens
    emulated=_vertex_emulated,
    online=_vertex_online,
    batch=_vertex_batch,
)

REGISTRY: Mapping[str, Registered] = {p.name: p for p in (LINKMODEL, GEMINI, VERTEX)}


def registered(name: str) -> Registered:
    """The provider `name` (an UnknownProviderError from the catalog, listing the known ones, for any other)."""
    return REGISTRY[provider_facts(name).name]


def batch_providers() -> list[str]:
    """The providers with a batch client, in the registry's order."""
    return [p.name for p in REGISTRY.values() if p.batch is not None]
