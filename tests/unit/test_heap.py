"""The CLI's malloc setting: made where malloc is glibc's, a no-op elsewhere, harmless to repeat."""

from __future__ import annotations

import os
import sys

from batcher.heap import keep_freed_memory


def test_glibc_thresholds_are_set_where_malloc_is_glibc_s() -> None:
    glibc = sys.platform == "linux" and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    assert keep_freed_memory() is glibc
    assert keep_freed_memory() is glibc  # a second call changes nothing
    assert len(bytearray(40 << 20)) == 40 << 20  # above the threshold: still served (by a mapping)
