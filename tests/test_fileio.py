"""Atomic replacement and advisory locks (mace_ase.fileio), across real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from mace_ase.fileio import LockedError, atomic_write, atomic_writer, file_lock


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "record.json"
    atomic_write(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_writer(target) as handle:
            handle.write(b"half of the new")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record.json"]


def test_a_lock_held_by_another_process_is_refused_by_name(tmp_path):
    lock = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from mace_ase.fileio import file_lock
            with file_lock({str(lock)!r}):
                print("locked", flush=True)
                sys.stdin.readline()
        """)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match="training folder"):
            with file_lock(lock, blocking=False, what="training folder"):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    with file_lock(lock, blocking=False):  # released with the other process
        pass
