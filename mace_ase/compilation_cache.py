"""JAX's persistent compilation cache, on by default for mace-ase, in the user cache folder.

Compiling a MACE model takes seconds; with the cache, a second process (a new script, a
CLI call, a benchmark) loads the compiled program from disk instead. The cache belongs to
the whole process (it is JAX's global setting): the first folder set stays, for every
JAX program of the process.

Where it goes, in order:
  * ``MaceCalculator(..., compilation_cache="/path")`` or ``compilation_cache=False`` (off);
  * ``MACE_ASE_COMPILATION_CACHE=/path``, or ``=0`` / ``off`` to leave it off;
  * a folder the user already gave JAX (``JAX_COMPILATION_CACHE_DIR``, ``jax.config``) is kept;
  * otherwise ``$XDG_CACHE_HOME/mace-ase/jax-compilation/<CPU type>`` (``~/.cache/...``).

Its size is bounded (JAX evicts the least recently used entries): ``DEFAULT_MAX_BYTES``,
unless ``JAX_COMPILATION_CACHE_MAX_SIZE`` (bytes, -1 for no bound) says otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import threading
import warnings
from pathlib import Path

import jax

logger = logging.getLogger(__name__)

ENV = "MACE_ASE_COMPILATION_CACHE"
OFF = {"0", "off", "false", "no", "none", ""}
DEFAULT_MAX_BYTES = 2**30  # an entry takes ~0.2 MB (bundled model) to a few MB (card size)

_lock = threading.Lock()


class CompilationCacheWarning(UserWarning):
    """A compilation-cache request that cannot take effect (the cache is process-wide)."""


def machine_tag() -> str:
    """The CPU type, as a folder name: compiled CPU code uses the instruction set it was built for,
    so a home folder shared by different machines must never hand one CPU's code to another."""
    description = platform.machine() + platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if not line.strip():
                break  # the first processor is enough
            if line.startswith(("model name", "flags", "Features", "CPU part")):
                description += line
    return f"{platform.machine() or 'cpu'}-{hashlib.sha256(description.encode()).hexdigest()[:12]}"


def default_folder() -> Path:
    """$XDG_CACHE_HOME (else ~/.cache) /mace-ase/jax-compilation/<CPU type>."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mace-ase" / "jax-compilation" / machine_tag()


def requested_folder(request: str | os.PathLike | bool | None = None) -> Path | None:
    """The folder a calculator asks for: its argument, else the environment, else the default; None: off."""
    if request is False:
        return None
    if request is None or request is True:
        value = os.environ.get(ENV)
        if value is not None:
            return None if value.strip().lower() in OFF else Path(value).expanduser()
        if jax.config.jax_compilation_cache_dir:
            return Path(jax.config.jax_compilation_cache_dir)  # the user's own JAX setting
        return default_folder()
    return Path(os.fspath(request)).expanduser()


def active_folder() -> Path | None:
    """The folder JAX's persistent cache writes to in this process (None: off)."""
    folder = jax.config.jax_compilation_cache_dir
    return Path(folder) if folder else None


def enable(request: str | os.PathLike | bool | None = None) -> Path | None:
    """Turn the persistent cache on for this process (first folder wins); returns the active folder.

    A later request for another folder, or to turn it off, cannot take effect once the
    cache is on: it gets a CompilationCacheWarning naming both folders.
    """
    wanted = requested_folder(request)
    with _lock:
        active = active_folder()
        if wanted is None:
            if active is not None and request is False:
                warnings.warn(
                    f"compilation_cache=False: JAX's persistent compilation cache is already on for this process "
                    f"({active}); it is process-wide, so it stays on. Set {ENV}=0 before the first calculator "
                    "to keep it off.", CompilationCacheWarning, stacklevel=3)
            return active
        if active is not None:
            if wanted.resolve() != active.resolve():
                warnings.warn(
                    f"compilation_cache={os.fspath(wanted)!r} ignored: JAX's persistent compilation cache is "
                    f"process-wide and already uses {active}.", CompilationCacheWarning, stacklevel=3)
            return active
        try:
            wanted.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            logger.warning("mace-ase: no persistent compilation cache (%s: %s)", wanted, error)
            return None
        if "JAX_COMPILATION_CACHE_MAX_SIZE" not in os.environ and jax.config.jax_compilation_cache_max_size == -1:
            jax.config.update("jax_compilation_cache_max_size", DEFAULT_MAX_BYTES)
        jax.config.update("jax_compilation_cache_dir", os.fspath(wanted))
        logger.info("mace-ase: persistent compilation cache in %s", wanted)
        return wanted
