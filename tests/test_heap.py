"""mace_ase.heap: freed C-heap memory goes back to the operating system (glibc's malloc_trim)."""

from __future__ import annotations

import ctypes
import platform

from mace_ase.heap import release_freed_memory


def resident_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024


def test_freed_heap_pages_go_back_to_the_system():
    assert platform.libc_ver()[0] == "glibc"  # the suite's platform; elsewhere the call is a no-op returning False
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    block, count = 64 * 1024, 1600  # 100 MiB in blocks below the mmap threshold: they live on the heap
    blocks = [libc.malloc(block) for _ in range(count)]
    for pointer in blocks:
        ctypes.memset(pointer, 1, block)  # resident
    before = resident_mib()
    for pointer in blocks[:-1]:  # the last block stays: the heap cannot shrink from its top by itself
        libc.free(pointer)
    freed = resident_mib()
    assert freed > before - 20  # free() alone kept the pages (what a compilation leaves behind)
    assert release_freed_memory() is True
    assert resident_mib() < freed - 80
    libc.free(blocks[-1])
