"""Keep freed memory for reuse instead of handing it back to the kernel after every image.

glibc's malloc serves a block over its mmap threshold (128 KiB at first, raised as such blocks are freed) with
a fresh mapping, and gives the top of its heap back once more than its trim threshold lies free there. A run
frees a 2 MB reply, its 1.5 MB image and their copies every image, so each image's buffers came from pages
the kernel had to fault in and zero again: about 900 faults an image, 3 to 4 ms of CPU on a virtual machine
whose every fresh page costs a fault in the host too (bench/gemini_client.py, bench/batch.py). Raising both
thresholds keeps those pages: the peak is what it was, it is only kept.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # mallopt's parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's own ceiling for it on 64 bits: blocks under it come from the heap
TRIM_THRESHOLD_BYTES = 128 << 20  # free memory kept at the heap's top before any is given back


def keep_freed_memory() -> bool:
    """Raise glibc's thresholds for this process; False where malloc is not glibc's (nothing changed)."""
    if sys.platform != "linux":
        return False
    try:
        glibc = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (ValueError, OSError):  # a libc that does not know the name (musl): not glibc
        return False
    if not glibc.startswith("glibc"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
