"""The C heap under XLA: memory freed back to the operating system, and glibc's settings for training.

XLA compiles on several threads; what it frees stays in the C allocator's per-thread
arenas, counted in the process's resident memory, and the compiled program's buffers
come on top of it. glibc's ``malloc_trim`` hands those free pages back. On the
OFF23-medium-like model (aspirin, first run, nothing in the compilation cache) the
calculator's resident memory after compiling drops from 0.56 to 0.40 GB.

A training step wants the opposite. Its temporaries are far above glibc's mmap threshold,
so every step maps them afresh and the kernel zeroes and faults them in page by page:
on the card's step (64 aspirin graphs, 2 CPU cores) 2.6 million page faults and 9 of 21
CPU-seconds in the kernel. `TRAINING_TUNABLES` make glibc back the heap with huge pages
(2 MB faults instead of 4 kB ones). glibc reads them only when a process starts, so
`mace-ase train` restarts itself with them (`with_training_tunables`).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys


@functools.cache
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; musl has none
    except (OSError, AttributeError):
        return None


def release_freed_memory() -> bool:
    """Return the C heap's free pages to the operating system; False where the C library cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


#: glibc >= 2.35: malloc's memory is madvised for transparent huge pages.
TRAINING_TUNABLES = "glibc.malloc.hugetlb=1"


def _glibc_with_hugetlb() -> bool:
    try:  # the C library this process runs on (platform.libc_ver() reads what the executable was linked against)
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
        major, minor = (int(part) for part in version.split(".")[:2])
    except (AttributeError, ValueError, OSError):  # not glibc, or not a POSIX system
        return False
    return name == "glibc" and (major, minor) >= (2, 35)


def training_tunables_missing(environ=os.environ) -> bool:
    """True where glibc could take `TRAINING_TUNABLES` and no malloc tunable was chosen.

    Any ``glibc.malloc.*`` the user set (``GLIBC_TUNABLES=glibc.malloc.hugetlb=0`` to opt
    out) is theirs to keep.
    """
    return _glibc_with_hugetlb() and "glibc.malloc." not in environ.get("GLIBC_TUNABLES", "")


def with_training_tunables(environ=os.environ) -> dict:
    """A copy of the environment with `TRAINING_TUNABLES` added to the user's other tunables."""
    tunables = environ.get("GLIBC_TUNABLES")
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TRAINING_TUNABLES}" if tunables else TRAINING_TUNABLES}
