"""Live parity against InstaDeep's mlip 0.2.5: the same weights give the same numbers.

mlip builds its own v1 MACE (the mace-organics card architecture, ten SPICE2 elements),
initialises it, and the parameters are perturbed so that energies differ by eV between
conformers and every block matters. mlip saves the archive; mace-ase loads it and is compared
with mlip's own prediction on rMD17 aspirin frames, xtb_druglike molecules covering all ten
elements, and a periodic box of 64 waters.

The weights are float32 (exactly representable in float64) and the reference is always mlip
in float64: mace-ase float64 must agree to roundoff, and mace-ase float32 is held to the
float32 tolerances against that float64 reference (stricter than comparing two float32 runs,
whose errors could cancel or add).
"""

from __future__ import annotations

import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SHARED_DATA, require, shared_data

pytestmark = [pytest.mark.mlip, pytest.mark.x64]
require("mlip")

import mlip_reference as ref  # noqa: E402  (needs mlip)
from mlip.models.model_io import load_model_from_zip, save_model_to_zip  # noqa: E402
from mlip.models_v1.mace.models import Mace  # noqa: E402
from mlip.typing.properties import Properties  # noqa: E402

from mace_ase.archive import load_archive, save_archive  # noqa: E402
from mace_ase.calculator import MaceCalculator  # noqa: E402
from mace_ase.errors import UnsupportedConfigError  # noqa: E402
from mace_ase.model import energy_forces_stress  # noqa: E402
from mace_ase.model.params import parameter_layout  # noqa: E402
from mace_ase.neighbours import pad_graph, structure_from_atoms  # noqa: E402

# float64: mace-ase and mlip agree to roundoff: |ΔE| per atom (eV), max |ΔF| (eV/Å), max |Δσ| (eV/Å^3).
FLOAT64_TOLERANCES = (1e-11, 1e-10, 1e-12)
# float32 against the float64 reference, relative to what float32 can resolve: |ΔE| over
# |E - E0| (the interaction energy; E0 is exact in any precision), max |ΔF| over max |F| (these
# weights make forces of 100+ eV/Å), max |Δσ| over max |σ|. Measured: 8e-7, 3e-6, <1e-6.
FLOAT32_RELATIVE_TOLERANCES = (2e-6, 1e-5, 1e-5)

MEASURED: dict = {}  # filled by the tests; printed at the end with -s (for the README numbers)


@pytest.fixture(scope="module")
def e0():
    shared_data("xtb_druglike")
    return ref.xtb_atomic_energies(SHARED_DATA)


@pytest.fixture(scope="module")
def card(e0, tmp_path_factory):
    """(mlip ForceField, the archive mlip wrote, mace-ase's MaceModel loaded from it)."""
    force_field = ref.build_force_field(ref.CARD_CONFIG, ref.dataset_info(e0), seed=0, readout_gain=40.0)
    path = tmp_path_factory.mktemp("card") / "card.zip"
    save_model_to_zip(path, force_field)
    return force_field, path, load_archive(path)


@pytest.fixture(scope="module")
def systems():
    shared_data("rmd17")
    molecules = ref.aspirin_frames(SHARED_DATA) + ref.druglike_covering_all_elements(SHARED_DATA)
    return {"molecules": molecules, "water": ref.water_box(4)}


@pytest.fixture(scope="module")
def evaluate(card):
    return ref.Evaluator(card[0])


@pytest.fixture(scope="module")
def reference(card, systems, evaluate):
    """mlip's float64 prediction for every structure, in one batch."""
    results = evaluate(card[0].params, systems["molecules"] + [systems["water"]])
    return {"molecules": results[:-1], "water": results[-1:]}


def _mace_ase(model, systems, dtype):
    calc = MaceCalculator(model, dtype=dtype)
    out = {"molecules": calc.calculate_batch(systems["molecules"])}
    water = systems["water"].copy()
    water.calc = calc
    out["water"] = [{"energy": water.get_potential_energy(), "forces": water.get_forces(),
                     "stress": water.get_stress(voigt=False)}]
    return out


def _differences(results, reference, structures):
    de = max(abs(r["energy"] - e["energy"]) / len(a) for r, e, a in zip(results, reference, structures))
    df = max(np.abs(r["forces"] - e["forces"]).max() for r, e in zip(results, reference))
    return de, df


def _relative_differences(results, reference, structures, e0):
    de = max(abs(r["energy"] - e["energy"]) / abs(e["energy"] - sum(e0[z] for z in a.numbers))
             for r, e, a in zip(results, reference, structures))
    df = max(np.abs(r["forces"] - e["forces"]).max() / np.abs(e["forces"]).max() for r, e in zip(results, reference))
    return de, df


def test_reference_model_is_not_trivial(card, systems, reference):
    """The weights make a steep energy surface, and the test structures hold all ten elements."""
    molecules = systems["molecules"]
    covered = set().union(*(set(a.numbers.tolist()) for a in molecules))
    assert covered == set(ref.SPICE2_ELEMENTS)
    energies = [r["energy"] for r in reference["molecules"][:5]]  # aspirin conformers only
    assert np.ptp(energies) > 1.0, energies  # eV
    assert max(np.abs(r["forces"]).max() for r in reference["molecules"]) > 1.0  # eV/Å
    assert np.abs(reference["water"][0]["stress"]).max() > 1e-3  # eV/Å^3


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_card_model_matches_mlip(card, systems, reference, e0, dtype):
    mace = _mace_ase(card[2], systems, dtype)
    e_tol, f_tol, s_tol = FLOAT64_TOLERANCES if dtype == "float64" else FLOAT32_RELATIVE_TOLERANCES
    aspirin = slice(0, 5)
    for name, structures, results, expected in [
        ("aspirin", systems["molecules"][aspirin], mace["molecules"][aspirin], reference["molecules"][aspirin]),
        ("druglike", systems["molecules"][5:], mace["molecules"][5:], reference["molecules"][5:]),
        ("water64", [systems["water"]], mace["water"], reference["water"]),
    ]:
        if dtype == "float64":
            de, df = _differences(results, expected, structures)
        else:
            de, df = _relative_differences(results, expected, structures, e0)
        MEASURED[(name, dtype)] = (de, df)
        assert de <= e_tol, (name, dtype, de)
        assert df <= f_tol, (name, dtype, df)
    # mlip's stress is dE/dstrain / V with the same (ASE) sign convention.
    expected_stress = reference["water"][0]["stress"]
    ds = np.abs(mace["water"][0]["stress"] - expected_stress).max()
    if dtype == "float32":
        ds /= np.abs(expected_stress).max()
    MEASURED[("water64 stress", dtype)] = (ds,)
    assert ds <= s_tol, (dtype, ds)


def test_every_block_contributes(card, systems):
    """Zeroing any single parameter leaf of the loaded model changes the aspirin energy."""
    model = card[2]
    atoms = systems["molecules"][0]
    structure = structure_from_atoms(atoms, model.config.atomic_numbers, model.cutoff)
    graph = pad_graph([structure], structure.num_nodes, structure.num_edges, 1, dtype=np.float64)
    energy = jax.jit(lambda p: energy_forces_stress(p, model.config, graph, False)["energy"][0])
    base = float(energy(model.params))
    flat = {leaf.path: leaf for leaf in parameter_layout(model.config)}
    for path in flat:
        zeroed = jax.tree.map(lambda x: x, model.params)
        node = zeroed
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = jnp.zeros_like(node[path[-1]])
        # 1e-6 eV is far above float64 noise (1e-12) and above the parity tolerance x atoms
        # (2e-8 eV): a wrong coefficient in any block would fail the parity test.
        assert abs(float(energy(zeroed)) - base) > 1e-6, f"zeroing {flat[path].mlip_key} left the energy unchanged"


# ------------------------------------------------------------------ archives both ways


@pytest.fixture
def quick_mlip_loader(monkeypatch):
    """mlip's loader runs flax's init eagerly only to learn the parameter shapes (for the
    pmap axis); that costs ~40 s for a new architecture. The same shapes, traced: ~2 s."""
    from mlip.models_v1.predictor_v1 import ForceFieldPredictorV1

    original = ForceFieldPredictorV1.init
    monkeypatch.setattr(ForceFieldPredictorV1, "init",
                        lambda self, *args, **kwargs: jax.eval_shape(lambda *a: original(self, *a, **kwargs), *args))


def test_mlip_loads_an_archive_written_by_mace_ase(card, systems, reference, evaluate, quick_mlip_loader, tmp_path):
    path = save_archive(card[2], tmp_path / "written-by-mace-ase.zip")
    force_field = load_model_from_zip(Mace, path, required_properties=Properties(stress=True))
    # mlip's reader gives back the parameters mlip wrote, bit for bit...
    for a, b in zip(jax.tree.leaves(force_field.params), jax.tree.leaves(card[0].params)):
        np.testing.assert_array_equal(np.asarray(a, np.float32), b)
    # ... and mlip's network built from the hyper-parameters mace-ase wrote gives the same numbers.
    results = ref.Evaluator(force_field)(force_field.params, systems["molecules"][:2])
    for r, e in zip(results, reference["molecules"][:2]):
        assert r["energy"] == pytest.approx(e["energy"], abs=1e-10)
        np.testing.assert_allclose(r["forces"], e["forces"], rtol=0, atol=1e-12)


def test_archive_with_a_pmap_device_axis_loads(card, systems, tmp_path):
    """Archives trained with pmap keep a leading device axis of length 1 on every leaf."""
    path = tmp_path / "pmap.zip"
    with zipfile.ZipFile(card[1]) as source, zipfile.ZipFile(path, "w") as target:
        with np.load(io.BytesIO(source.read("params.npz"))) as npz:
            flat = {k: npz[k][None] for k in npz.files}
        buffer = io.BytesIO()
        np.savez(buffer, **flat)
        target.writestr("hyperparams.json", source.read("hyperparams.json"))
        target.writestr("params.npz", buffer.getvalue())
    loaded = load_archive(path)
    assert loaded.config == card[2].config
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(card[2].params)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------ other configurations


VARIANTS = {
    # node_symmetry < l_max, correlation 3, two readout heads, soft envelope, tanh
    "nsym1-corr3-heads2-soft-tanh": dict(l_max=2, node_symmetry=1, correlation=3, num_readout_heads=2,
                                         radial_envelope="soft_envelope", activation="tanh"),
    # correlation 1, symmetric basis, three layers, avg_r_min from the dataset, elu
    "corr1-symbasis-3layers-rmin-elu": dict(l_max=2, node_symmetry=2, correlation=1, num_layers=3,
                                            symmetric_tensor_product_basis=True, activation="elu"),
    # a single layer (selector and non-linear readout in one layer), l_max 1, relu, and an
    # explicit atomic-energies dict (mlip reads its keys as species indices, missing ones 0)
    "1layer-lmax1-relu-E0dict": dict(num_layers=1, l_max=1, node_symmetry=1, correlation=2, activation="relu",
                                     atomic_energies={0: -13.5, 1: -1030.25, 3: -2041.0, 9: 7.5}),
    # symmetric basis at correlation 3, l_max 3 and node_symmetry 0, sigmoid, 'zero' E0s
    "symbasis-corr3-nsym0-sigmoid-zeroE0": dict(l_max=3, node_symmetry=0, correlation=3,
                                                symmetric_tensor_product_basis=True, activation="sigmoid",
                                                atomic_energies="zero", readout_irreps=("8x0e", "0e")),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_small_configurations_match_mlip(variant, e0, systems, tmp_path):
    config = dict(ref.CARD_CONFIG, num_channels=8, **VARIANTS[variant])
    info = ref.dataset_info(e0, avg_r_min_angstrom=0.93 if "rmin" in variant else None)
    force_field = ref.build_force_field(config, info, seed=3, readout_gain=40.0)
    path = tmp_path / f"{variant}.zip"
    save_model_to_zip(path, force_field)
    model = load_archive(path)
    structures = systems["molecules"][:1] + systems["molecules"][5:7]
    expected = ref.Evaluator(force_field)(force_field.params, structures)
    results = MaceCalculator(model, dtype="float64").calculate_batch(structures)
    de, df = _differences(results, expected, structures)
    MEASURED[(variant, "float64")] = (de, df)
    assert max(np.abs(e["forces"]).max() for e in expected) > 0.1
    assert de <= FLOAT64_TOLERANCES[0] and df <= FLOAT64_TOLERANCES[1], (de, df)


@pytest.mark.parametrize("name, value", [("gate_nodes", True), ("species_embedding_dim", 4)])
def test_unsupported_values_are_refused_by_name(name, value, e0, tmp_path):
    """Archives mlip writes for options mace-ase does not implement are refused, by name."""
    config = dict(ref.CARD_CONFIG, num_channels=4, l_max=1, node_symmetry=1, **{name: value})
    force_field = ref.build_force_field(config, ref.dataset_info(e0), seed=0, readout_gain=1.0)
    path = tmp_path / "unsupported.zip"
    save_model_to_zip(path, force_field)
    with pytest.raises(UnsupportedConfigError, match=name):
        load_archive(path)


def test_pseudotensors_are_refused_by_name(card, tmp_path):
    """mlip 0.2.5 cannot even build include_pseudotensors=True MACE; the flag alone is refused."""
    path = tmp_path / "pseudotensors.zip"
    with zipfile.ZipFile(card[1]) as source, zipfile.ZipFile(path, "w") as target:
        hyperparams = json.loads(source.read("hyperparams.json"))
        hyperparams["config"]["include_pseudotensors"] = True
        target.writestr("hyperparams.json", json.dumps(hyperparams))
        target.writestr("params.npz", source.read("params.npz"))
    with pytest.raises(UnsupportedConfigError, match="include_pseudotensors"):
        load_archive(path)


def teardown_module():
    for key, value in sorted(MEASURED.items()):
        print("parity", key, " ".join(f"{v:.2e}" for v in value))
