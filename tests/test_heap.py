"""mace_ase.heap: freed C-heap memory goes back to the operating system (glibc's malloc_trim), and the
training tunables turn XLA's per-call page faults into a few huge-page faults."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys

from mace_ase.heap import TRAINING_TUNABLES, release_freed_memory, training_tunables_missing, with_training_tunables


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


# A jitted call whose 256 MiB temporary (the matrix product) is far above glibc's mmap threshold,
# like a training step's: minor page faults per call, after the compiling one.
FAULTS_PER_CALL = """
import resource, jax, jax.numpy as jnp
a, b = jnp.ones((65536, 64), jnp.float32), jnp.ones((64, 1024), jnp.float32)
f = jax.jit(lambda a, b: jnp.max(a @ b, axis=0).sum())
f(a, b).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    f(a, b).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


def faults_per_call(env) -> float:
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_CALL], env={**env, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout.split()[-1])


def test_training_tunables_replace_small_page_faults_by_huge_ones():
    with open("/sys/kernel/mm/transparent_hugepage/enabled") as thp:
        assert "[never]" not in thp.read()  # the suite's platform (huge pages on madvise or always)
    plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    assert training_tunables_missing(plain)
    default, tuned = faults_per_call(plain), faults_per_call(with_training_tunables(plain))
    assert default > 0.8 * 256 * 2**20 / 4096  # every call faults its temporary in again, 4 kB at a time
    assert tuned < default / 10


def test_the_users_own_malloc_tunables_are_kept():
    assert platform.libc_ver()[0] == "glibc"
    assert not training_tunables_missing({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})  # the way to opt out
    assert training_tunables_missing({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F"})
    assert with_training_tunables({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX512F", "HOME": "/h"}) == {
        "GLIBC_TUNABLES": f"glibc.cpu.hwcaps=-AVX512F:{TRAINING_TUNABLES}", "HOME": "/h"}
    assert with_training_tunables({})["GLIBC_TUNABLES"] == TRAINING_TUNABLES
