"""Shared fixtures: data paths, a small random model, and an aspirin molecule.

float64 is enabled for the whole test session; float32 paths pass explicit dtypes.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data; skips the test where the data folder is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found: {path}")
    return path


def small_model(atomic_numbers=(1, 6, 7, 8), seed: int = 0, **overrides):
    """A small MACE with random parameters: logic tests, not parity (those use the card config)."""
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
    params = init_params(config, jax.random.key(seed), dtype=np.float64)
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
