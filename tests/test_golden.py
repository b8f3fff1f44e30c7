"""Parity with mlip where mlip is absent: archives mlip wrote and the numbers mlip gave.

tests/data/golden/ is made by tests/data/make_golden.py (with mlip 0.2.5 installed): mlip's
own v1 MACE with perturbed random weights, and mlip's float64 energies, forces and stresses
on aspirin, drug-like molecules holding all ten SPICE2 elements, and a periodic water box.
"""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
import pytest

from mace_ase.archive import load_archive
from mace_ase.calculator import MaceCalculator

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
NAMES = ("card16", "variant8")
E_TOL, F_TOL, S_TOL = 1e-9, 1e-8, 1e-10  # eV/atom, eV/Å, eV/Å^3 (float64)


def golden_structures(name):
    with np.load(GOLDEN / f"{name}.npz") as npz:
        data = {key: npz[key] for key in npz.files}
    structures = []
    for k in range(len(data)):
        if f"{k}/numbers" not in data:
            break
        atoms = ase.Atoms(numbers=data[f"{k}/numbers"], positions=data[f"{k}/positions"],
                          cell=data[f"{k}/cell"], pbc=data[f"{k}/pbc"])
        expected = {"energy": float(data[f"{k}/energy"]), "forces": data[f"{k}/forces"],
                    "stress": data.get(f"{k}/stress")}
        structures.append((atoms, expected))
    return structures


@pytest.mark.parametrize("name", NAMES)
def test_mace_ase_reproduces_mlip_golden_numbers(name):
    model = load_archive(GOLDEN / f"{name}.zip")
    structures = golden_structures(name)
    assert set().union(*(set(a.numbers.tolist()) for a, _ in structures)) == set(model.config.atomic_numbers)
    assert max(np.abs(e["forces"]).max() for _, e in structures) > 1.0  # a steep surface, eV/Å
    calc = MaceCalculator(model, dtype="float64")
    molecules = [(a, e) for a, e in structures if not a.pbc.any()]
    periodic = [(a, e) for a, e in structures if a.pbc.all()]
    assert molecules and periodic
    results = calc.calculate_batch([a for a, _ in molecules]) + calc.calculate_batch(
        [a for a, _ in periodic], properties=("energy", "forces", "stress"))
    for (atoms, expected), result in zip(molecules + periodic, results):
        assert abs(result["energy"] - expected["energy"]) / len(atoms) <= E_TOL
        assert np.abs(result["forces"] - expected["forces"]).max() <= F_TOL
        if expected["stress"] is not None:
            from ase.stress import full_3x3_to_voigt_6_stress

            assert np.abs(result["stress"] - full_3x3_to_voigt_6_stress(expected["stress"])).max() <= S_TOL


def test_golden_fixtures_are_small():
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 5 * 2**20
