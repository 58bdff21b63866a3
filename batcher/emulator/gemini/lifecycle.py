"""Batch creation and ending: drawing a batch's fate, and billing the lines it finished once it has ended."""

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
    if config.batch_partial_lines:  # each line finishes at its own moment while the batch runs
        start, end = batch.running_from(), batch.finishes_at
        for line in lines:
            line.done_at = state.rng.uniform(start, end)
        if fails:  # a failing batch stops at a moment of its run, keeping what it finished
            batch.fails_at = state.rng.uniform(start, end)
    state.batches[batch.name] = batch
    state.stats.created_batch(batch.name, display_name)
    return batch


def settle_batch(state: GeminiState, batch: Batch, now: float) -> None:
    """Record a batch's ending once it has one: bill the image lines it finished (every line of a succeeded
    batch), and give it a responses file holding them (a partial one for any other ending, unless drawn not to)."""
    ended = batch.state(now)
    if ended not in TERMINAL:
        return
    batch.ended = ended
    config, stats = state.config, state.stats
    stats.ended_batch(batch.name, ended)
    finished = batch.finished(now)
    for i in finished:
        line = batch.lines[i]
        if line.fate == "image":
            stats.bill_line(batch.model, line.key, batch.name, _image_sha256(state, line))
        elif line.fate == "refused":
            stats.batch_lines_refused += 1
        else:
            stats.batch_lines_failed += 1
    if not finished:
        return
    if ended != SUCCEEDED and state.roll(config.batch_ended_no_file_rate):
        stats.batches_without_file.append(batch.name)
        return
    kept = []
    for i in finished:
        # a succeeded batch's file may leave out billed lines; a partial file holds exactly what was finished
        if ended == SUCCEEDED and batch.lines[i].fate == "image" and state.roll(config.batch_omit_line_rate):
            stats.omit_line(batch.name, batch.lines[i].key)
            continue
        kept.append(i)
    end = batch.end_time()
    name = f"files/batch-{batch.name.removeprefix('batches/')}"
    expires = end + config.file_ttl_s
    results = StoredFile(name, f"{batch.display_name} results", RESULTS_MIME, 0, end, expires, "GENERATED")
    results.batch = batch.name
    if batch.results_gone_status is not None or state.roll(config.results_gone_rate):
        results.gone_status = batch.results_gone_status or config.results_gone_status
        stats.results_files_gone += 1
    state.files.add(results)
    batch.results_file = results.name
    batch.file_lines = tuple(kept)


def _image_sha256(state: GeminiState, line: BatchLine) -> str:
    """The sha256 of the image this line's response carries (the bytes a client must write)."""
    spec = line.spec
    if spec is None:
        return ""
    return state.images.sha256(spec.prompt, spec.width, spec.height, state.config.image_bytes)


def settle(state: GeminiState, now: float) -> GeminiStats:
    """End every batch whose time has come (billing the lines it finished, once); the counters."""
    for batch in state.batches.values():
        if batch.ended is None:
            settle_batch(state, batch, now)
    return state.stats


def lose_results(state: GeminiState, batch_name: str, status: int, now: float) -> None:
    """Make one batch's responses file gone (answering `status`): at once if it has one, else when it is made."""
    if status not in (403, 404):
        raise ValueError("a gone responses file answers 403 or 404")
    settle(state, now)
    batch = state.batches[batch_name]
    batch.results_gone_status = status
    stored = state.files.files.get(batch.results_file or "")
    if stored is not None and stored.gone_status is None:
        stored.gone_status = status
        state.stats.results_files_gone += 1
