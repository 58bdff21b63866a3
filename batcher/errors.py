"""The errors a user can act on. Each one's docstring is its default message.

The CLI turns any ``BatcherError`` into one line on stderr and the exit code it carries; nothing here ever
holds the API key (messages are built from replies and specs, never from request headers).
"""

from __future__ import annotations

import datetime
import enum
from dataclasses import dataclass
from typing import Any


class ExitCode(enum.IntEnum):
    """The process's exit status; every exit of the CLI takes one of these."""

    OK = 0  # every task succeeded
    FAILED = 1  # some task failed for good, or the run could not go on (store, output)
    USAGE = 2  # usage, manifest or key error
    BUDGET = 3  # the budget was reached
    QUOTA = 4  # the API's daily quota is spent: run again after it resets (the message says when)
    SUBMITTED = 5  # `--no-wait`: the batches are created and run at the API; run again to collect
    INTERRUPTED = 130  # Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it)


class BatcherError(Exception):
    """batcher failed."""

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


# --- manifests and settings ---------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class Problem:
    """One fault in a manifest: where it is and what is wrong."""

    file: str
    line: int | None
    column: int | None
    message: str

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


class ManifestError(BatcherError):
    """The manifest is not valid; nothing was written."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line is None, p.line or 0, p.column or 0, p.message))
        super().__init__("\n".join(str(p) for p in self.problems))


class ConfigError(BatcherError):
    """A setting is missing or invalid."""

    exit_code = ExitCode.USAGE


class UnknownPriceError(ConfigError):
    """No price is known for this model: set price_usd in the manifest or --price on the command line."""


# --- the store ----------------------------------------------------------------------------------------


class StoreError(BatcherError):
    """The job store cannot be used."""


class StoreBusyError(StoreError):
    """The job store is locked by another process; try again when it has finished."""


class StoreReadOnlyError(StoreError):
    """The job store is read-only: check the file's and its folder's permissions."""


class StoreFullError(StoreError):
    """The disk holding the job store is full: free space, then run again to resume."""


class StoreMissingError(StoreError):
    """There is no job store there: point --db or BATCHER_DB at one, or create it with `batcher import` or `run`."""

    exit_code = ExitCode.USAGE


class JobNotFoundError(StoreError):
    """No such job in the store."""

    exit_code = ExitCode.USAGE


# --- the API ------------------------------------------------------------------------------------------


class AuthError(BatcherError):
    """The API key was rejected: check the provider's key variable. Nothing was lost; run again to resume."""

    exit_code = ExitCode.USAGE

    @classmethod
    def rejected(cls, detail: str, key_env: str = "LINKMODEL_API_KEY") -> AuthError:
        return cls(f"the API rejected the key ({detail}): check {key_env}; nothing was lost, run again to resume")


class QuotaError(BatcherError):
    """The API's per-day quota is spent: nothing more is sent until it resets; everything done is kept."""

    exit_code = ExitCode.QUOTA

    def __init__(self, message: str, until: float) -> None:
        super().__init__(message)
        self.until = until

    @classmethod
    def spent(cls, provider: str, until: float, detail: str) -> QuotaError:
        local = datetime.datetime.fromtimestamp(until).astimezone()
        when = local.strftime("%Y-%m-%d %H:%M %Z").strip()
        return cls(
            f"the {provider} API's daily quota is spent ({detail}); it resets at midnight Pacific time, "
            f"{when} here: run again then to go on; nothing was lost",
            until,
        )


class BudgetError(BatcherError):
    """The budget was reached: nothing more is created; everything done is kept. Raise it, or run again, with a
    larger budget to go on."""

    exit_code = ExitCode.BUDGET
    result: Any = None  # from the Python API: the job's JobResult when the budget stopped it


class SpendCapError(BudgetError):
    """The spending cap of the account at the provider is reached: nothing more is created; everything done is
    kept. Raise the cap there, then run again to go on."""

    @classmethod
    def reached(cls, provider: str, detail: str) -> SpendCapError:
        return cls(f"the spending cap was reached at the provider ({provider}: {detail}): nothing more is created "
                   "and everything done is kept; raise the cap there, then run again to go on")  # fmt: skip


# --- the run ------------------------------------------------------------------------------------------


class OutputError(BatcherError):
    """The output directory cannot be written: check its permissions and free space, then run again."""


class DestinationError(OutputError):
    """A run's output destination (a bucket) cannot be written: found before any paid call."""

    exit_code = ExitCode.USAGE
