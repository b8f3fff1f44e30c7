"""mace-torch models imported into mace-ase give mace-torch's numbers.

Six small random models built by mace-torch 0.3.16 (tests/data/golden_torch, made by
tests/data/make_torch_golden.py), one per family the importer reads: OFF-like with L = 1 and
L = 2 hidden features, a residual first layer (with a soft distance transform and elements
listed out of order), ZBL + Agnesi in the plain MACE class, density normalisation + ZBL +
Agnesi, and a two-head model. Each runs on a molecule and a periodic cell in float64:

* against mace-torch's numbers stored with the models (no torch needed);
* against mace-torch itself, live (torch.load of the same files, MACECalculator);
* negative controls: without the message-path permutation, with e3nn-jax's activation
  constant, or without mace-torch's float32 ZBL prefactor, the same comparison fails.

Tolerance: 1e-10 relative (energy to |E|; forces, stress and per-atom energies to their largest component).
"""

from __future__ import annotations

from pathlib import Path

import ase
import jax
import numpy as np
import pytest
from conftest import require

from mace_ase.archive import MaceModel, load_archive
from mace_ase.formats import mace_torch
from mace_ase.model import energy_forces_stress
from mace_ase.neighbours import pad_graph, structure_from_atoms

pytestmark = pytest.mark.x64

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_torch"
FAMILIES = ("off_l1", "off_l2", "residual_first", "zbl_agnesi", "density_zbl_agnesi", "two_heads")
RTOL = 1e-10
_evaluate = jax.jit(energy_forces_stress, static_argnums=(1, 3))


def golden(name):
    with np.load(GOLDEN / f"{name}.npz") as npz:
        data = {key: npz[key] for key in npz.files}
    structures = [ase.Atoms(numbers=data[f"{k}/numbers"], positions=data[f"{k}/positions"],
                            cell=data[f"{k}/cell"], pbc=data[f"{k}/pbc"]) for k in range(2)]
    expected = {
        str(head): [{key: data[f"{head}/{k}/{key}"] for key in ("energy", "forces", "stress", "energies") if f"{head}/{k}/{key}" in data}
                    for k in range(2)]
        for head in data["heads"]
    }
    return structures, expected


def predict(model: MaceModel, structures) -> list[dict]:
    """mace-ase's float64 energies, forces and stresses, both structures in one padded batch."""
    graphs = [structure_from_atoms(a, model.config.atomic_numbers, model.cutoff) for a in structures]
    graph = pad_graph(graphs, sum(s.num_nodes for s in graphs) + 1, sum(s.num_edges for s in graphs) + 1,
                      len(graphs) + 1, dtype=np.float64)
    out = {k: np.asarray(v) for k, v in _evaluate(model.params, model.config, graph, True).items()}
    results, start = [], 0
    for g, s in enumerate(graphs):
        nodes = slice(start, start + s.num_nodes)
        start += s.num_nodes
        results.append({"energy": out["energy"][g], "forces": out["forces"][nodes], "stress": out["stress"][g],
                        "energies": out["energies"][nodes]})
    return results


def deviations(results, expected, structures) -> dict:
    worst = {"energy": 0.0, "forces": 0.0, "stress": 0.0, "energies": 0.0}
    for r, e, atoms in zip(results, expected, structures):
        worst["energy"] = max(worst["energy"], abs(r["energy"] - e["energy"]) / abs(e["energy"]))
        worst["energies"] = max(worst["energies"], np.abs(r["energies"] - e["energies"]).max() / np.abs(e["energies"]).max())
        worst["forces"] = max(worst["forces"], np.abs(r["forces"] - e["forces"]).max() / np.abs(e["forces"]).max())
        if atoms.pbc.all():
            worst["stress"] = max(worst["stress"], np.abs(r["stress"] - e["stress"]).max() / np.abs(e["stress"]).max())
    return worst


def assert_parity(results, expected, structures, what):
    worst = deviations(results, expected, structures)
    assert max(worst.values()) <= RTOL, (what, worst)


def heads_of(name):
    return golden(name)[1].keys()


CASES = [(name, head) for name in FAMILIES for head in heads_of(name)]


@pytest.fixture(scope="module")
def imported():
    """(family, head) -> (MaceModel, mace-ase's results); NumPy only (module scope runs outside x64)."""
    cache = {}

    def get(name, head):
        if (name, head) not in cache:
            structures, _ = golden(name)
            model = load_archive(GOLDEN / f"{name}.model", head=head)
            with jax.enable_x64(True):
                cache[(name, head)] = (model, predict(model, structures))
        return cache[(name, head)]

    return get


@pytest.mark.parametrize("name, head", CASES)
def test_matches_mace_torch_golden_numbers(name, head, imported):
    structures, expected = golden(name)
    model, results = imported(name, head)
    assert model.metadata["head"] == head
    # the surface is not flat, and both structures see real forces
    assert min(np.abs(e["forces"]).max() for e in expected[head]) > 0.05
    assert_parity(results, expected[head], structures, (name, head))


@pytest.mark.parametrize("name", FAMILIES)
def test_matches_mace_torch_live(name, imported):
    """The same files through torch.load and mace-torch's MACECalculator, now."""
    require("torch")
    torch_reference = require("torch_reference")
    import torch

    structures, expected = golden(name)
    torch_model = torch.load(GOLDEN / f"{name}.model", map_location="cpu", weights_only=False)
    for head in expected:
        live = torch_reference.evaluate(torch_model, structures, head=head if len(expected) > 1 else None)
        _, results = imported(name, head)
        assert_parity(results, live, structures, (name, head, "live"))


def test_all_89_elements_of_mace_mp_match_mace_torch_live(tmp_path):
    """An MP-like model over MACE-MP-0's 89 elements (density normalisation, ZBL, Agnesi), on a
    periodic cell mixing light, transition-metal, heavy and actinide atoms."""
    require("torch")
    torch_reference = require("torch_reference")
    import torch

    spec = dict(torch_reference.FAMILIES["density_zbl_agnesi"], elements=torch_reference.MP_ELEMENTS,
                hidden="4x0e+4x1o")
    path = tmp_path / "mp89.model"
    torch.save(torch_reference.build("mp89", seed=5, spec=spec), path)
    model = load_archive(path)
    assert model.config.atomic_numbers == torch_reference.MP_ELEMENTS
    rng = np.random.default_rng(7)
    numbers = [1, 3, 8, 26, 29, 40, 47, 56, 57, 74, 78, 83, 89, 92, 94, 6]
    grid = np.stack(np.meshgrid(*[np.arange(2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    positions = np.concatenate([grid, grid + 0.5]) * 2.9 + rng.normal(scale=0.1, size=(16, 3))
    cell = ase.Atoms(numbers=numbers, positions=positions, cell=np.diag([5.8, 5.8, 5.8]), pbc=True)
    molecule = ase.Atoms(numbers=[92, 8, 8, 1, 1], positions=[[0, 0, 0], [1.8, 0, 0], [-1.8, 0.1, 0], [2.4, 0.7, 0], [-2.4, 0.8, 0.1]])
    structures = [molecule, cell]
    with jax.enable_x64(True):
        results = predict(model, structures)
    live = torch_reference.evaluate(torch.load(path, map_location="cpu", weights_only=False), structures)
    assert min(np.abs(e["forces"]).max() for e in live) > 0.05
    assert_parity(results, live, structures, "mp89")


def test_a_periodic_box_with_more_than_20k_edges_matches_mace_torch_live():
    """1,029 atoms of water, 28k edges, float64: large scatters and reductions (where a miscompiling
    JAX release, such as 0.10.2's jax-ml/jax#39103 above ~16k rows, would show) against mace-torch."""
    require("torch")
    torch_reference = require("torch_reference")
    import torch
    from conftest import molecules_in_cell

    box = molecules_in_cell([("H2O", 3.1 * (np.array(ijk) + 0.5)) for ijk in np.ndindex(7, 7, 7)], np.eye(3) * 3.1 * 7, seed=4)
    model = load_archive(GOLDEN / "off_l1.model")
    assert structure_from_atoms(box, model.config.atomic_numbers, model.cutoff).num_edges > 20_000
    with jax.enable_x64(True):
        results = predict(model, [box])
    live = torch_reference.evaluate(torch.load(GOLDEN / "off_l1.model", map_location="cpu", weights_only=False), [box])
    assert_parity(results, live, [box], "water box, 1,029 atoms")


# ------------------------------------------------------------------ negative controls


def test_without_the_path_permutation_the_numbers_are_wrong(monkeypatch):
    """Keep mace-torch's message-path order (as if it were mace-ase's): parity must break.

    The L = 1 and L = 2 families have several paths per output irrep, the case where the
    orders differ; the error is small on a random model (research note: 4e-7 eV), far above
    the tolerance all the same.
    """
    from mace_ase.model.mace import message_paths
    from mace_ase.model.config import MaceConfig

    original = mace_torch.tp_slots

    def in_mace_ase_order(irreps_in, irreps_sh, targets):
        slots = original(irreps_in, irreps_sh, targets)
        # the file's columns, relabelled with mace-ase's paths in mace-ase's order: no permutation
        config = MaceConfig(atomic_numbers=(1,), atomic_energies=(0.0,), l_max=max(ir[0] for _, ir in irreps_sh),
                            node_symmetry=max(ir[0] for _, ir in irreps_in), num_layers=2)
        layer = 0 if len(irreps_in) == 1 else 1
        mace_order = []
        for ir_out, ir_paths in message_paths(config, layer).items():
            for path in ir_paths:
                ir = (ir_out.l, ir_out.p)
                mace_order.append((ir, (0, 1), ir) if len(path) == 1 else
                                  ((path[0].l, path[0].p), (path[1].l, path[1].p), ir))
        assert sorted(mace_order) == sorted(slots)
        return mace_order if mace_order != slots else slots

    for name in ("off_l1", "off_l2"):
        structures, expected = golden(name)
        monkeypatch.setattr(mace_torch, "tp_slots", in_mace_ase_order)
        model = load_archive(GOLDEN / f"{name}.model")
        monkeypatch.setattr(mace_torch, "tp_slots", original)
        with jax.enable_x64(True):
            worst = deviations(predict(model, structures), expected["Default"], structures)
        assert max(worst.values()) > 100 * RTOL, (name, worst)


def test_with_e3nn_jax_activation_constant_the_numbers_are_wrong():
    structures, expected = golden("off_l1")
    model = load_archive(GOLDEN / "off_l1.model")
    assert model.config.activation_scale == pytest.approx(1.6791767923989418, rel=1e-15)
    wrong = MaceModel(model.config.replace(activation_scale=None), model.params)
    worst = deviations(predict(wrong, structures), expected["Default"], structures)
    assert worst["energy"] > 1e-6 and worst["forces"] > 1e-4, worst


def test_without_the_float32_zbl_prefactor_the_numbers_are_wrong():
    """mace-torch evaluates 14.3996 Z_u Z_v in float32 (torch's global default dtype)."""
    structures, expected = golden("zbl_agnesi")
    model = load_archive(GOLDEN / "zbl_agnesi.model")
    assert model.config.pair_repulsion_prefactor_float32
    wrong = MaceModel(model.config.replace(pair_repulsion_prefactor_float32=False), model.params)
    worst = deviations(predict(wrong, structures), expected["Default"], structures)
    assert worst["forces"] > 10 * RTOL, worst
    # and ZBL itself is a sizeable part of these energies
    from mace_ase.model.mace import edge_geometry
    from mace_ase.model.repulsion import zbl_node_energies

    for atoms in structures:
        s = structure_from_atoms(atoms, model.config.atomic_numbers, model.cutoff)
        graph = pad_graph([s], s.num_nodes, s.num_edges, 1, dtype=np.float64)
        _, lengths = edge_geometry(graph.positions, graph.cells, graph)
        assert np.abs(zbl_node_energies(model.config, lengths, graph)).sum() > 1e-2  # eV


def test_higher_correlation_orders_matter():
    """The product weights were scaled up: dropping the third order changes the forces by > 1 %."""
    structures, expected = golden("off_l1")
    model = load_archive(GOLDEN / "off_l1.model")
    params = jax.tree.map(lambda x: x, model.params)
    for layer in params["layers"]:
        for key in list(layer["product"]):
            if key.startswith("w3_"):
                layer["product"][key] = np.zeros_like(layer["product"][key])
    worst = deviations(predict(MaceModel(model.config, params), structures), expected["Default"], structures)
    assert worst["forces"] > 1e-2, worst
