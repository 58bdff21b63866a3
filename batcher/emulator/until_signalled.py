"""Serving an emulator from the command line until SIGINT or SIGTERM (`batcher emulator`, for every provider)."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable

import click

from batcher.emulator.serving import LoopbackServer


async def serve_until_signalled(emu: LoopbackServer, ready_line: Callable[[], str]) -> None:
    """Start `emu`, print `ready_line()` (the line a parent process waits for), serve until SIGINT or SIGTERM,
    then close it. A port that cannot be bound is one line, never a traceback."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        try:
            await emu.start()
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {emu.bind_address}: {exc.strerror}") from None
        click.echo(ready_line())
        sys.stdout.flush()
        await stop.wait()
    finally:
        await emu.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
