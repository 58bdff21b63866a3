"""Batch creation and ending: drawing a batch's fate, and billing it once it has succeeded."""

from __future__ import annotations

from batcher.emulator.gemini.batches import SUCCEEDED, TERMINAL, Batch, BatchLine
from batcher.emulator.gemini.files import StoredFile
from batcher.emulator.gemini.state import GeminiState
from batcher.emulator.gemini.stats import GeminiStats

RESULTS_MIME = "application/jsonl"


def create_batch(
    state: GeminiState, display_name: str, model: str, input_file: str, lines: list[BatchLine], now: float
) -> Batch:
    """A new batch (never deduplicated: the same request twice makes two batches), its fate drawn now."""
    config = state.config
    for line in lines:
        if line.fate == "failed":
            continue
        if state.roll(config.batch_line_fail_rate):
            line.fate, line.error = "failed", "Internal error encountered."
        elif state.roll(config.batch_line_refusal_rate):
            line.fate = "refused"
    fails = state.roll(config.batch_fail_rate)
    duration = config.batch_latency.sample(state.rng)
    name = f"batches/{state.next_id()}"
    batch = Batch(name, display_name, model, input_file, lines, now, now + duration, now + config.batch_expiry_s, fails)
    state.batches[batch.name] = batch
    state.stats.created_batch(display_name)
    return batch


def settle_batch(state: GeminiState, batch: Batch, now: float) -> None:
    """Record a batch's ending once it has one; a succeeded batch bills its image lines and gets a results file."""
    ended = batch.state(now)
    if ended not in TERMINAL:
        return
    batch.ended = ended
    stats = state.stats
    stats.ended_batch(ended)
    if ended != SUCCEEDED:
        return
    for line in batch.lines:
        if line.fate == "image":
            stats.bill_line(batch.model, line.key)
        elif line.fate == "refused":
            stats.batch_lines_refused += 1
        else:
            stats.batch_lines_failed += 1
    end = batch.end_time()
    name = f"files/batch-{batch.name.removeprefix('batches/')}"
    expires = end + state.config.file_ttl_s
    results = StoredFile(name, f"{batch.display_name} results", RESULTS_MIME, 0, end, expires, "GENERATED")
    results.batch = batch.name
    state.files.add(results)
    batch.results_file = results.name


def settle(state: GeminiState, now: float) -> GeminiStats:
    """End every batch whose time has come (billing a succeeded one's image lines once); the counters."""
    for batch in state.batches.values():
        if batch.ended is None:
            settle_batch(state, batch, now)
    return state.stats
