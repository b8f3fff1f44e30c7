"""Parity with mlip where mlip is absent: archives mlip wrote and the numbers mlip gave.

tests/data/golden/ is made by tests/data/make_golden.py (with mlip 0.2.5 installed): mlip's
own v1 MACE with perturbed random weights, and mlip's float64 energies, forces and stresses
on aspirin, drug-like molecules holding all ten SPICE2 elements, and a periodic water box.
"""

from __future__ import annotations

from pathlib import Path

import ase
import jax
import numpy as np
import pytest

from mace_ase.archive import load_archive
from mace_ase.model import energy_forces_stress
from mace_ase.neighbours import pad_graph, structure_from_atoms

pytestmark = pytest.mark.x64  # float64 model functions throughout

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
NAMES = ("card16", "variant8")
E_TOL, F_TOL, S_TOL = 1e-11, 1e-10, 1e-12  # eV/atom, eV/Å, eV/Å^3 (float64)


def golden_data(name):
    with np.load(GOLDEN / f"{name}.npz") as npz:
        return {key: npz[key] for key in npz.files}


def golden_structures(name):
    data = golden_data(name)
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
    # mlip derives the radial normalisation from avg_r_min with a float32 computation whose
    # last bits depend on the XLA release; the value mlip used travels with the numbers.
    stored_scale = float(golden_data(name)["radial_scale"])
    assert model.config.radial_scale == pytest.approx(stored_scale, rel=1e-6)
    config = model.config.replace(radial_scale=stored_scale)
    structures = golden_structures(name)
    assert set().union(*(set(a.numbers.tolist()) for a, _ in structures)) == set(model.config.atomic_numbers)
    assert max(np.abs(e["forces"]).max() for _, e in structures) > 1.0  # a steep surface, eV/Å
    # One padded graph for all structures (molecules have a zero cell): one compile.
    graph_structures = [structure_from_atoms(a, model.config.atomic_numbers, model.cutoff) for a, _ in structures]
    graph = pad_graph(graph_structures, sum(s.num_nodes for s in graph_structures) + 1,
                      sum(s.num_edges for s in graph_structures) + 1, len(structures) + 1, dtype=np.float64)
    out = jax.jit(energy_forces_stress, static_argnums=(1, 3))(model.params, config, graph, True)
    out = {key: np.asarray(value) for key, value in out.items()}
    assert any(a.pbc.all() for a, _ in structures) and any(not a.pbc.any() for a, _ in structures)
    start = 0
    for g, (atoms, expected) in enumerate(structures):
        forces = out["forces"][start : start + len(atoms)]
        start += len(atoms)
        assert abs(out["energy"][g] - expected["energy"]) / len(atoms) <= E_TOL
        assert np.abs(forces - expected["forces"]).max() <= F_TOL
        if expected["stress"] is not None:
            assert np.abs(out["stress"][g] - expected["stress"]).max() <= S_TOL


def test_golden_fixtures_are_small():
    total = sum(p.stat().st_size for p in GOLDEN.iterdir())
    assert total < 5 * 2**20
