"""The bundled default model (weights/mace-ase-small-xtb.zip, trained by mace_ase.training).

It was trained on 31 of the 36 xtb_druglike molecules; acetone, aspirin, benzoic acid,
sulfamethoxazole and triphenylphosphine oxide were held out (split by mol_name, seed 0),
so every check below runs on molecules the model never saw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, shared_data

BUNDLED = REPO / "weights" / "mace-ase-small-xtb.zip"


@pytest.fixture(scope="module")
def calculator():
    from mace_ase.calculator import MaceCalculator

    return MaceCalculator()  # the default model, no arguments


@pytest.fixture(scope="module")
def held_out():
    from mace_ase.training.data import read_frames, split_frames

    frames = read_frames(shared_data("xtb_druglike", "xtb_druglike_train.xyz"))
    train, valid = split_frames(frames, 0.15, seed=0, group_key="mol_name")
    assert {f.info["mol_name"] for f in valid} == {"acetone", "aspirin", "benzoic_acid", "sulfamethoxazole", "triphenylphosphine_oxide"}
    return valid


def _bonds(atoms, mult=1.15):
    from ase.neighborlist import natural_cutoffs, neighbor_list

    i, j = neighbor_list("ij", atoms, natural_cutoffs(atoms, mult=mult))
    return {(a, b) for a, b in zip(i, j) if a < b}


def assert_same_molecule(before, after):
    """No bond broken (each stays within 1.4x the covalent radii sum) and none made."""
    assert _bonds(before) <= _bonds(after, 1.4), "a bond broke"
    assert _bonds(after) <= _bonds(before, 1.4), "a new bond formed"


def test_default_calculator_is_the_bundled_model(calculator):
    model = calculator.model
    assert model.metadata["name"] == "mace-ase-small-xtb" and model.metadata["license"] == "MIT"
    assert model.config.atomic_numbers == (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)
    assert Path(BUNDLED).stat().st_size < 20 * 2**20


def test_held_out_molecules_forces_and_energies(calculator, held_out):
    import ase

    picks = held_out[::5]  # 25 frames, five per molecule
    de, df = [], []
    for frame in picks:
        atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions)
        atoms.calc = calculator
        de.append((atoms.get_potential_energy() - frame.energy) / len(atoms))
        df.append(atoms.get_forces() - frame.forces)
    force_mae = np.mean(np.abs(np.concatenate(df)))
    energy_mae = np.mean(np.abs(de))
    # Predicting zero forces scores 0.59 eV/Å on these frames; the model ~0.18 (weights/README.md).
    assert force_mae < FORCE_MAE_LIMIT, force_mae
    assert energy_mae < ENERGY_MAE_LIMIT, energy_mae


FORCE_MAE_LIMIT = 0.22  # eV/Å
ENERGY_MAE_LIMIT = 0.05  # eV/atom


def test_relaxes_a_held_out_molecule(calculator, held_out):
    from ase.optimize import BFGS

    frame = next(f for f in held_out if f.info["mol_name"] == "sulfamethoxazole")
    atoms = frame.to_atoms()
    atoms.calc = calculator
    start = atoms.copy()
    start_energy = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=0.05, steps=300)
    assert atoms.get_potential_energy() < start_energy - 0.1  # a 500 K MD frame relaxes downhill
    assert_same_molecule(start, atoms)


def test_langevin_md_stays_bound(calculator, held_out):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import thermalize_momenta

    frame = next(f for f in held_out if f.info["mol_name"] == "aspirin")
    atoms = frame.to_atoms()
    atoms.calc = calculator
    start = atoms.copy()
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False,
                        rng=np.random.default_rng(1))
    dynamics.run(100)
    assert np.isfinite(atoms.positions).all()
    assert atoms.get_temperature() < 1000
    assert np.abs(atoms.get_forces()).max() < 20
    assert_same_molecule(start, atoms)
