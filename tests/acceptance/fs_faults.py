"""Breaking the file system under a run on purpose: a store locked by another process, a read-only file or
directory, a full disk. Each helper skips the test with a one-line reason when its mechanism is unavailable.

We often run as root, and root ignores file modes; so a read-only file is made with `chattr +i` (immutable, which
binds root too) when running as root and with a plain chmod otherwise, and a full disk is a small tmpfs mounted
for the test (root with CAP_SYS_ADMIN only).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0
FILL_CHUNK = b"\0" * 65536

# Holds BEGIN EXCLUSIVE on a SQLite file until its stdin closes; prints "locked" once it holds it.
_LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@contextlib.contextmanager
def store_locked(db: Path) -> Iterator[None]:
    """Another process holds an exclusive transaction on `db` for as long as the block runs."""
    proc = subprocess.Popen([sys.executable, "-c", _LOCKER, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(30)
        if proc.stdout is not None:
            proc.stdout.close()


def _chattr(flag: str, path: Path) -> subprocess.CompletedProcess[str] | None:
    tool = shutil.which("chattr")
    if tool is None:
        return None
    return subprocess.run([tool, flag, str(path)], capture_output=True, text=True, check=False)


def _cannot(why: str) -> None:
    """Skip where the machine cannot break the disk this way; under CI=true, fail: CI must run these tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI runs as root with chattr and tmpfs, and must run every store-fault test")
    pytest.skip(why)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` (a file or a directory) cannot be written, even by root, while the block runs."""
    if not IS_ROOT:
        mode = path.stat().st_mode
        path.chmod(stat.S_IMODE(mode) & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        try:
            yield
        finally:
            path.chmod(stat.S_IMODE(mode))
        return
    done = _chattr("+i", path)
    if done is None or done.returncode != 0:
        why = done.stderr.strip() if done is not None else "chattr is not installed"
        _cannot(f"cannot make a file read-only for root here: {why}")
    try:
        yield
    finally:
        _chattr("-i", path)


@contextlib.contextmanager
def small_disk(mount_point: Path, size: str = "2m") -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount_point` for the block (needs root): a disk that can be filled."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if not IS_ROOT or shutil.which("mount") is None:
        _cannot("a full disk needs a tmpfs mount, which needs root (not available here)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        _cannot(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(disk: Path) -> Path:
    """Write a filler file on `disk` until it is full; delete the returned path to free the space again."""
    filler = disk / "filler.bin"
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(FILL_CHUNK)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                break
    # the last partial chunk too: write single bytes until not one more fits
    with open(filler, "ab", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 512)
    return filler
