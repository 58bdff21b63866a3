"""Serving the Vertex emulator on a loopback socket in the running loop: ``async with VertexEmulator() as emu``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from batcher.emulator.clock import EmulatorClock
from batcher.emulator.serving import ClockedEmulator
from batcher.emulator.vertex import lifecycle
from batcher.emulator.vertex.app import TOKEN_PATH, VertexApp
from batcher.emulator.vertex.config import VertexConfig
from batcher.emulator.vertex.state import VertexState
from batcher.emulator.vertex.stats import VertexStats
from batcher.emulator.vertex.tokens import new_key_file

DEFAULT_ACCOUNT = "batcher@emulator-project.iam.gserviceaccount.com"


class VertexEmulator(ClockedEmulator[VertexConfig, VertexState]):
    """The Vertex AI emulator as an aiohttp server. Point a client's Vertex base URL and Cloud Storage host
    (``STORAGE_EMULATOR_HOST``) at `origin`, and its credentials at a key file from `write_key_file`."""

    def __init__(self, config: VertexConfig | None = None, **knobs: Any) -> None:
        base = config or VertexConfig()
        super().__init__(base.replace(**knobs) if knobs else base)

    def _build(self, clock: EmulatorClock) -> tuple[VertexState, web.Application]:
        state = VertexState(self._initial, clock.now())
        return state, VertexApp(state, clock).build()

    @property
    def project(self) -> str:
        """The first project the emulator allows (its id)."""
        return next(iter(self.config.projects))

    @property
    def project_number(self) -> str:
        return self.config.projects[self.project]

    @property
    def token_uri(self) -> str:
        return self.origin + TOKEN_PATH

    @property
    def stats(self) -> VertexStats:
        """The live counters, with every job brought up to now (its finished rows exported and billed)."""
        return lifecycle.settle(self.state, self.clock.now())

    def add_bucket(self, name: str) -> None:
        """A bucket in its own Cloud Storage (kept if it is there already)."""
        self.state.store.buckets.setdefault(name, {})

    def add_service_account(self, email: str, public_pem: bytes | str) -> None:
        """Accept JWTs `email` signs with the private half of this RSA public key (PEM)."""
        self.state.tokens.register(email, public_pem)

    def new_key_file(self, email: str = DEFAULT_ACCOUNT, project: str | None = None) -> dict[str, str]:
        """A fresh service-account key (as Google's console downloads it) whose token_uri is this emulator."""
        info, public_pem = new_key_file(email, self.token_uri, project or self.project)
        self.add_service_account(email, public_pem)
        return info

    def write_key_file(self, path: str | Path, email: str = DEFAULT_ACCOUNT) -> Path:
        """Write `new_key_file` to `path` (readable by its owner only); the path, for GOOGLE_APPLICATION_CREDENTIALS."""
        target = Path(path)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(self.new_key_file(email), out, indent=2)
        return target

    def configure(self, **knobs: Any) -> VertexConfig:
        """Change knobs at run time (not host or port); returns the new config."""
        return self.state.configure(self.clock.now(), **knobs)

    def advance(self, seconds: float) -> None:
        """Move the emulator's clock forward: tokens expire, jobs run and end as if that much time had passed."""
        self.clock.advance(seconds)

    def reset(self) -> None:
        """Forget counters, tokens, objects and jobs, and re-seed; registered keys stay."""
        self.state.reset(self.clock.now())
