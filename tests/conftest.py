"""Shared fixtures and the suite's rules: data paths, oracles, precision, a small random model.

Rules (issue "Trust"): the suite runs with JAX's defaults (float32, x64 off), the configuration
users get. A test that needs float64 model functions says so with ``@pytest.mark.x64`` (or a
module-level ``pytestmark``); calculators ask for float64 themselves (``dtype="float64"``).
A missing data folder or oracle is a failure that names it, never a silent skip: the run fails
if any test skipped. ``MACE_ASE_ALLOW_SKIPS=1`` turns those failures back into skips, for a
deliberate partial run (no ../shared, no oracles); CI never sets it.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import jax
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"
ALLOW_SKIPS = os.environ.get("MACE_ASE_ALLOW_SKIPS", "").strip() == "1"


def missing(what: str):
    """A prerequisite is absent: fail, naming it (or skip under MACE_ASE_ALLOW_SKIPS=1)."""
    if ALLOW_SKIPS:
        pytest.skip(what)
    pytest.fail(f"{what} (set MACE_ASE_ALLOW_SKIPS=1 to skip such tests deliberately)", pytrace=False)


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data; its absence fails the test with the path."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        missing(f"shared data not found: {path} (the tests expect the shared/ folder beside the repository)")
    return path


def shared_file(*parts: str) -> Path:
    """A file under ../shared (models/, research/ ...); its absence fails the test with the path."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        missing(f"shared file not found: {path} (the tests expect the shared/ folder beside the repository)")
    return path


def subprocess_env(cache, **extra):
    """A JAX subprocess on the CPU with a persistent compilation cache in `cache`: processes sharing it compile each program once."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("XLA_FLAGS", None)
    env.update(extra)
    return env


def require(module: str):
    """Import a test oracle (mlip, mace-torch, h5py ...); its absence fails the test by name."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing(f"test oracle {module!r} is not importable ({error}); install the test extra: pip install -e '.[test]'")


@pytest.fixture(autouse=True)
def _precision(request):
    """x64 only where a test asks for it; a test that leaves x64 switched on globally fails."""
    if request.node.get_closest_marker("x64") is not None:
        with jax.enable_x64(True):
            yield
    else:
        yield
    if jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", False)
        pytest.fail("the test left JAX's x64 mode switched on for the rest of the process")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped and not ALLOW_SKIPS:
        terminalreporter.write_line(
            f"mace-ase: {len(skipped)} test(s) skipped; a complete run skips none (see the reasons above)",
            red=True,
        )


def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and not ALLOW_SKIPS and exitstatus == 0:
        session.exitstatus = 1


def small_model(atomic_numbers=(1, 6, 7, 8), seed: int = 0, **overrides):
    """A small MACE with random parameters: logic tests, not parity (those use the card config).

    Parameters are float64 NumPy arrays (drawn with x64 on, whatever the caller's mode).
    """
    from mace_ase.archive import MaceModel
    from mace_ase.model import MaceConfig, init_params

    settings = dict(
        atomic_numbers=tuple(atomic_numbers),
        atomic_energies=tuple(-1.0 - 0.5 * z for z in atomic_numbers),
        cutoff=5.0,
        num_layers=2,
        num_channels=8,
        l_max=2,
        node_symmetry=2,
        correlation=2,
        readout_irreps=("8x0e", "0e"),
        num_bessel=6,
        radial_mlp_hidden=(16, 16),
        avg_num_neighbors=10.0,
        scaling_mean=0.0,
        scaling_std=1.0,
    )
    settings.update(overrides)
    config = MaceConfig(**settings)
    with jax.enable_x64(True):
        params = jax.tree.map(np.asarray, init_params(config, jax.random.key(seed), dtype=np.float64))
    return MaceModel(config, params, metadata={"name": "small-test-model", "license": "MIT"})


@pytest.fixture(scope="session")
def model():
    return small_model()


@pytest.fixture
def aspirin():
    """rMD17 aspirin, frame 0, as ASE Atoms (no cell)."""
    import ase

    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    return ase.Atoms(numbers=data["nuclear_charges"], positions=data["coords"][0])


def molecules_in_cell(placed, cell, seed: int = 0):
    """Small molecules (ASE names) at the given centres, randomly oriented, in a periodic cell, rattled."""
    import ase
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    atoms = ase.Atoms()
    for name, centre in placed:
        m = molecule(name)
        m.rotate(rng.uniform(0, 360), rng.normal(size=3))
        m.translate(centre)
        atoms += m
    atoms.cell = cell
    atoms.pbc = True
    atoms.rattle(0.05, seed=seed)
    return atoms
