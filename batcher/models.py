"""Plain values shared by every layer: task specs and task states. No I/O. (What the models offer: catalog.py.)"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from json.encoder import encode_basestring

from batcher.catalog import DEFAULT_PROVIDER

# --- task specs -----------------------------------------------------------------------------------------


def normalise_prompt(prompt: str) -> str:
    """The prompt as identity sees it: NFC, trimmed, inner whitespace runs folded to one space."""
    return " ".join(unicodedata.normalize("NFC", prompt).split())


@dataclass(frozen=True)
class TaskSpec:
    """One image to generate, fully resolved from the manifest."""

    model: str
    prompt: str
    quality: str
    size: str
    filename: str  # relative to the job's output directory, already checked to stay inside it
    images: tuple[str, ...] = ()  # input images of an edit request (URLs or data: URIs)
    seed: str | None = None  # a user's variant label: distinct seeds are distinct tasks on purpose
    name: str | None = None  # a task's name in the manifest, for chains (`from:`)
    source: str = ""  # "file:line" the task came from, for messages
    variables: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @functools.cached_property
    def key(self) -> str:
        """A stable identity from what the API is asked for (not where the file goes)."""
        return spec_key(self.model, self.prompt, self.quality, self.size, self.images, self.seed)

    @property
    def parent_key(self) -> str | None:
        """The key of the task whose output is this task's first input (`from:` in the manifest), if any."""
        return parent_of(self.images)


def spec_key(
    model: str, prompt: str, quality: str, size: str, images: tuple[str, ...] = (), seed: str | None = None
) -> str:
    """128-bit hex digest of the normalised spec; equal specs give equal keys across jobs and runs.

    The canonical text is the compact JSON array [model, prompt, quality, size, [images], seed], built from
    json's own string encoder piece by piece: the same text as json.dumps at a third of the cost (a million
    rows are imported at once), and stable forever, since stored keys depend on it.
    """
    e = encode_basestring
    pictures = ",".join([e(image_identity(i)) for i in images]) if images else ""
    canon = (
        f"[{e(model)},{e(normalise_prompt(prompt))},{e(quality)},{e(size)},[{pictures}],"
        f"{'null' if seed is None else e(seed)}]"
    )
    return hashlib.sha256(canon.encode()).hexdigest()[:32]


ImportRow = tuple[str, int, str | None, str, str, str, str, str, str, str | None, str, str | None]
IMPORT_BATCH = 5_000  # rows per batch while importing a manifest


def import_row(spec: TaskSpec, seq: int) -> ImportRow:
    """A spec as the store imports it (a tuple, cheap to build and to send between processes): key, seq (its
    place in the manifest), name, source, model, prompt, quality, size, images (JSON), seed, filename, parent."""
    images = json.dumps(list(spec.images)) if spec.images else "[]"
    return (spec.key, seq, spec.name, spec.source, spec.model, spec.prompt, spec.quality, spec.size, images,
            spec.seed, spec.filename, spec.parent_key)  # fmt: skip


def import_batches(specs: Iterable[TaskSpec], size: int = IMPORT_BATCH) -> Iterator[list[ImportRow]]:
    """Specs as import rows in manifest order, `size` at a time."""
    batch: list[ImportRow] = []
    for seq, spec in enumerate(specs, 1):
        batch.append(import_row(spec, seq))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# --- cache and chains: input image references -----------------------------------------------------------
# A task's `images` hold references, resolved to what the API accepts only when the create is sent:
#   https://...                 a URL, sent as it is
#   data:image/...;base64,...   an inline image, sent as it is
#   file:<sha256>:<abs path>    a local file, read, checked against its sha256 and inlined as a data: URI
#   from:<parent key>           the output of another task of the job (a chain), inlined the same way
# Identity (spec_key) sees a local file by its content only, so moving a project keeps its keys and an edited
# file makes a new task; a chained task sees its parent by the parent's key, so a changed parent changes it.

LOCAL_REF = "file:"
FROM_REF = "from:"


def local_ref(sha256: str, path: str) -> str:
    return f"{LOCAL_REF}{sha256}:{path}"


def from_ref(parent_key: str) -> str:
    return f"{FROM_REF}{parent_key}"


def image_identity(ref: str) -> str:
    """What identity sees of one input image reference: a local file's content hash, anything else as is."""
    if ref.startswith(LOCAL_REF):
        return "sha256:" + ref[len(LOCAL_REF) : len(LOCAL_REF) + 64]
    return ref


def parent_of(images: tuple[str, ...]) -> str | None:
    """The parent task's key when the first input is another task's output."""
    return images[0][len(FROM_REF) :] if images and images[0].startswith(FROM_REF) else None


ROUTES = ("online", "batch")  # a manifest's `route:`: one request per image, or the provider's batch mode
BATCH_MAX_REQUESTS = 100  # requests per batch when the manifest's `batch: max_requests` is not given
BATCH_MAX_BYTES = 100_000_000  # bytes of one batch's request file when `batch: max_bytes` is not given
BATCH_MAX_BYTES_LIMIT = 2_000_000_000  # the Gemini Files API's limit on one uploaded file
BATCH_MAX_REQUESTS_LIMIT = 100_000


class OnUnknown(enum.StrEnum):
    """What to do with a task whose create may or may not have reached the API."""

    RESUBMIT = "resubmit"  # create again; the report flags a possible double charge
    SKIP = "skip"  # fail it for good; never risk paying twice


@dataclass(frozen=True)
class JobSettings:
    """Job-wide settings from the manifest, before command-line overrides."""

    name: str
    output_dir: str
    price_usd: Decimal | None = None  # overrides the model's published price
    budget_usd: Decimal | None = None
    requests_per_second: float | None = None
    max_in_flight: int | None = None
    max_connections: int | None = None
    max_attempts: int | None = None
    provider: str = DEFAULT_PROVIDER  # a key of catalog.PROVIDERS: whose table the tasks were checked against
    route: str = "online"  # one of ROUTES; "batch" only with a provider that has a batch mode
    # the manifest's `batch:` mapping; None where not written (BATCH_MAX_REQUESTS, BATCH_MAX_BYTES and the
    # catalog's batch price then apply), as the other settings leave their defaults to the run's config
    batch_max_requests: int | None = None
    batch_max_bytes: int | None = None
    batch_price_usd: Decimal | None = None  # per image by batch, overriding the catalog's batch_price_usd
    batch_create_grace_s: float | None = None  # a create's batch may lag the listing this long (3 minutes)
    batch_staging: str | None = None  # gs://BUCKET/PREFIX: where a provider that needs one stages batch files


NOT_SENT = "not_sent"  # a call record's kind for a request refused before it left: no API call at all


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One HTTP call to the API, for the append-only ledger."""

    kind: str  # create | query | download | not_sent
    outcome: str
    http_status: int | None
    latency_ms: float
    at: float
    remote_task_id: str | None = None
    price_micros: int | None = None
    detail: str | None = None


# --- task states ----------------------------------------------------------------------------------------


class TaskStatus(enum.StrEnum):
    """Where a task stands. Only the store moves a task between states, fenced by its claim."""

    PENDING = "pending"  # to be created (at next_attempt_at)
    SUBMITTING = "submitting"  # intent committed, create on the wire: the reply decides
    UNKNOWN = "unknown"  # the create may or may not have been accepted (crash or lost reply)
    SUBMITTED = "submitted"  # the API holds the task: poll it, never create again
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (TaskStatus.SUCCEEDED, TaskStatus.FAILED)


STATUS_ORDER = tuple(TaskStatus)


class Failure(enum.StrEnum):
    """Why a failed task failed: what the report groups by and what `batcher retry --only` selects."""

    GENERATION = "generation"  # the API said Failed or Cancelled, as often as the settings allow: not billed
    DOWNLOAD = "download"  # billed, but its file could not be fetched or was not an image: paid, unusable
    RESULT_LOST = "result_lost"  # billed (a Success was seen), then the API no longer knew the task
    LOST = "lost"  # the API no longer knows the task and no Success was seen: it may have been billed
    TRANSIENT = "transient"  # server faults, or a generation still running after the give-up limit
    REFUSED = "refused"  # the API refused the request as invalid (400)
    UNKNOWN = "unknown"  # the create's outcome is unknown and --on-unknown=skip would not risk a second charge
    INPUT = "input"  # its input image, or the task whose output it edits, failed
    BLOCKED = "blocked"  # the model gave no image on purpose (IMAGE_SAFETY, a blocked prompt): not billed


BILLED_FAILURES = frozenset({Failure.DOWNLOAD, Failure.RESULT_LOST})

# The summary's counters of what to hold against the provider's invoice: (JSON key, the words every view shows,
# what they mean). The table, the JSON, the CSV (`failure` column) and the HTML report all use these words.
BILLED_APART: tuple[tuple[str, str, str], ...] = (
    ("paid_unusable", "paid, unusable", "billed, but the file could not be fetched or was not an image"),
    (
        "paid_result_lost",
        "paid, result lost",
        "billed, then its result was lost before it was saved (the API "
        "forgot the task, or a batch's results file is gone or leaves the line out)",
    ),
    ("known_duplicates", "known duplicates", "billed a second time for a task; images kept beside it"),
    ("lost_at_api", "lost at the API", "forgotten by the API before any Success was seen: possibly billed"),
)

# `batcher retry --only CAUSE`: the failures each choice puts back. A task whose input failed goes back with any
# choice (it settles again once its input does); one the API refused as invalid only when asked by name or `all`.
RETRY_CHOICES: dict[str, frozenset[Failure]] = {
    "generation": frozenset({Failure.GENERATION, Failure.INPUT}),
    "download": frozenset({Failure.DOWNLOAD, Failure.RESULT_LOST, Failure.INPUT}),
    "transient": frozenset({Failure.TRANSIENT, Failure.UNKNOWN, Failure.LOST, Failure.INPUT}),
    "refused": frozenset({Failure.REFUSED, Failure.INPUT}),
    "blocked": frozenset({Failure.BLOCKED, Failure.INPUT}),
    "all": frozenset(Failure),
}
RETRY_DEFAULT = ("generation", "download", "transient")
