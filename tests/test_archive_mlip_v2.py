"""mlip's v2 MACE archives (``mlip.models.mace``): read with parity against mlip, and written.

Golden (no mlip needed): tests/data/golden/v2*.npz, made by tests/data/make_golden_mlip_v2.py
with mlip 0.2.5: mlip's own v2 MACE for the ten SPICE2 elements with perturbed random weights
and dataset statistics no float rounds exactly, and mlip's float64 energies, forces and
stresses on rMD17 aspirin, xtb_druglike molecules holding all ten elements and a periodic water
box. The weights are redrawn from their seed and checked against the digest of the archive
mlip wrote. The card architecture (128 channels) is held to float64 roundoff, and mace-ase in
float32 to float32 tolerances against mlip's float64.

Live (mlip, required): an archive mlip writes now loads and matches mlip's float64 numbers;
archives mace-ase writes load with MLIPAudit's own loader and give mace-ase's numbers; the
parameter names and shapes written are those mlip's network expects.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import ase
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require, small_model

import mlip_v2_reference as ref2
from mace_ase.archive import MaceModel, load_archive, save_archive
from mace_ase.errors import ArchiveError, UnsupportedConfigError
from mace_ase.formats.mlip_v2 import e3j_product_basis, mlip_v2_from_model
from mace_ase.model import energy_forces_stress
from mace_ase.model.params import parameter_layout
from mace_ase.neighbours import pad_graph, structure_from_atoms

GOLDEN = Path(__file__).resolve().parent / "data" / "golden"
TOLERANCES = {  # |ΔE| per atom (eV), max |ΔF| (eV/Å), max |Δσ| (eV/Å^3), against mlip in float64
    "float64": (1e-11, 1e-10, 1e-12),
    # The golden card's surface is steep (|F| up to 43 eV/Å): rounding the positions to float32
    # alone moves it by ~1e-5 eV/atom, and mlip's own float32 is off by as much (see below).
    "float32": (5e-5, 1e-3, 2e-5),
}
MEASURED: dict = {}  # printed at the end with -s


# ------------------------------------------------------------------ golden fixtures


def golden(name: str):
    """(hyperparams, flat parameters redrawn and checked, [(atoms, expected)]) of a golden fixture."""
    with np.load(GOLDEN / f"{name}.npz") as npz:
        data = {key: npz[key] for key in npz.files}
    shapes = json.loads(str(data["shapes"]))
    flat = ref2.draw_weights(shapes, int(data["seed"]), float(data["readout_gain"]), int(data["num_layers"]))
    assert ref2.digest(flat) == str(data["sha256"]), "redrawn weights differ from those mlip evaluated"
    structures = []
    for k in range(len(data)):
        if f"{k}/numbers" not in data:
            break
        atoms = ase.Atoms(numbers=data[f"{k}/numbers"], positions=data[f"{k}/positions"],
                          cell=data[f"{k}/cell"], pbc=data[f"{k}/pbc"])
        mlip32 = {"energy": float(data[f"{k}/float32/energy"]), "forces": data[f"{k}/float32/forces"],
                  "stress": data.get(f"{k}/float32/stress")}
        structures.append((atoms, {"energy": float(data[f"{k}/energy"]), "forces": data[f"{k}/forces"],
                                   "stress": data.get(f"{k}/stress"), "mlip_float32": mlip32}))
    return json.loads(str(data["hyperparams"])), flat, structures


def write_zip(path: Path, hyperparams: dict, flat: dict[str, np.ndarray]) -> Path:
    buffer = io.BytesIO()
    np.savez(buffer, **flat)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hyperparams.json", json.dumps(hyperparams))
        archive.writestr("params.npz", buffer.getvalue())
    return path


def evaluate(model, structures, dtype: str) -> dict:
    """mace-ase on all structures in one padded graph (one compile), in JAX's mode for `dtype`."""
    parts = [structure_from_atoms(a, model.config.atomic_numbers, model.cutoff) for a in structures]
    with jax.enable_x64(dtype == "float64"):
        graph = pad_graph(parts, sum(s.num_nodes for s in parts) + 1, sum(s.num_edges for s in parts) + 1,
                          len(parts) + 1, dtype=np.dtype(dtype))
        params = jax.tree.map(lambda v: np.asarray(v, dtype), model.params)
        out = jax.jit(energy_forces_stress, static_argnums=(1, 3))(params, model.config, graph, True)
        return {key: np.asarray(value, np.float64) for key, value in out.items()}


def differences(out: dict, structures, expected) -> tuple[float, float, float]:
    de = df = ds = 0.0
    start = 0
    for g, (atoms, e) in enumerate(zip(structures, expected)):
        de = max(de, abs(out["energy"][g] - e["energy"]) / len(atoms))
        df = max(df, np.abs(out["forces"][start : start + len(atoms)] - e["forces"]).max())
        start += len(atoms)
        if e.get("stress") is not None:
            ds = max(ds, np.abs(out["stress"][g] - e["stress"]).max())
    return de, df, ds


@pytest.fixture(scope="module")
def card(tmp_path_factory):
    hyperparams, flat, structures = golden("v2card")
    path = write_zip(tmp_path_factory.mktemp("v2") / "v2card-mace.zip", hyperparams, flat)
    return load_archive(path), structures


def test_golden_card_is_the_card_architecture_on_a_steep_surface(card):
    model, structures = card
    c = model.config
    assert (c.num_layers, c.num_channels, c.l_max, c.node_symmetry, c.correlation) == (2, 128, 3, 3, 2)
    assert len(c.atomic_numbers) == 10 and set().union(*(set(a.numbers.tolist()) for a, _ in structures)) == set(c.atomic_numbers)
    assert (c.avg_num_neighbors, c.scaling_mean, c.scaling_std) == (14.3, -0.05, 0.8)
    assert np.ptp([e["energy"] for a, e in structures if len(a) == 21]) > 1.0  # aspirin conformers, eV
    assert max(np.abs(e["forces"]).max() for _, e in structures) > 10.0  # eV/Å
    water = [(a, e) for a, e in structures if a.pbc.all()]
    assert len(water) == 1 and len(water[0][0]) == 81 and np.abs(water[0][1]["stress"]).max() > 1e-2


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_golden_card_matches_mlip(card, dtype):
    model, structures = card
    atoms, expected = zip(*structures)
    de, df, ds = differences(evaluate(model, atoms, dtype), atoms, expected)
    MEASURED[("v2card", dtype)] = (de, df, ds)
    e_tol, f_tol, s_tol = TOLERANCES[dtype]
    assert de <= e_tol and df <= f_tol and ds <= s_tol, (de, df, ds)
    if dtype == "float32":  # as close to mlip's float64 as mlip's own float32 is, within 50 %
        mlip = differences(_as_output([e["mlip_float32"] for e in expected]), atoms, expected)
        MEASURED[("v2card", "mlip's own float32")] = mlip
        assert all(ours <= 1.5 * theirs for ours, theirs in zip((de, df, ds), mlip)), ((de, df, ds), mlip)


def _as_output(results: list[dict]) -> dict:
    return {"energy": np.array([r["energy"] for r in results]),
            "forces": np.concatenate([r["forces"] for r in results]),
            "stress": np.array([np.zeros((3, 3)) if r["stress"] is None else r["stress"] for r in results])}


@pytest.mark.parametrize("name", ["v2variant", "v2symmetric"])
def test_golden_variants_match_mlip(name, tmp_path):
    """e3j at correlation 3 with node_symmetry < l_max, soft envelope, tanh, own radial widths,
    avg_r_min, no E0s, ignored config statistics; and v1's symmetric contraction (e3nn_symmetric)."""
    hyperparams, flat, structures = golden(name)
    model = load_archive(write_zip(tmp_path / f"{name}.zip", hyperparams, flat))
    if name == "v2variant":
        assert model.config.atomic_energies == (0.0,) * 10 and model.config.avg_num_neighbors == 14.3
        assert model.config.avg_r_min == 0.93 and model.config.radial_mlp_hidden == (32, 16)
    else:
        assert model.config.symmetric_tensor_product_basis
    atoms, expected = zip(*structures)
    assert max(np.abs(e["forces"]).max() for e in expected) > 5.0
    de, df, ds = differences(evaluate(model, atoms, "float64"), atoms, expected)
    MEASURED[(name, "float64")] = (de, df, ds)
    e_tol, f_tol, s_tol = TOLERANCES["float64"]
    assert de <= e_tol and df <= f_tol and ds <= s_tol, (de, df, ds)


@pytest.mark.x64
def test_every_v2_block_contributes(tmp_path):
    """Zeroing any single parameter leaf read from a golden archive changes the energy: parity is not vacuous."""
    hyperparams, flat, structures = golden("v2variant")
    model = load_archive(write_zip(tmp_path / "variant.zip", hyperparams, flat))
    atoms = structures[0][0]
    part = structure_from_atoms(atoms, model.config.atomic_numbers, model.cutoff)
    graph = pad_graph([part], part.num_nodes, part.num_edges, 1, dtype=np.float64)
    energy = jax.jit(lambda p: energy_forces_stress(p, model.config, graph, False)["energy"][0])
    base = float(energy(model.params))
    for leaf in parameter_layout(model.config):
        zeroed = jax.tree.map(lambda x: x, model.params)
        node = zeroed
        for key in leaf.path[:-1]:
            node = node[key]
        node[leaf.path[-1]] = jnp.zeros_like(node[leaf.path[-1]])
        assert abs(float(energy(zeroed)) - base) > 1e-6, f"zeroing {leaf.path} left the energy unchanged"


@pytest.mark.parametrize("name", ["v2card", "v2variant"])
def test_v2_writer_reads_back_bit_for_bit(name, card, tmp_path):
    """mlip's archive -> mace-ase -> v2 archive -> mace-ase gives the same parameters, bit for bit.
    The variant (correlation 3) has e3j basis changes that are not symmetric matrices, so a
    writer applying the transpose of the reader's change instead of its inverse fails here."""
    if name == "v2card":
        model = card[0]
    else:
        hyperparams, flat, _ = golden(name)
        model = load_archive(write_zip(tmp_path / f"{name}.zip", hyperparams, flat))
    back = load_archive(save_archive(model, tmp_path / "again-mace.zip", format="mlip-v2"))
    assert back.config == model.config
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(model.params), jax.tree.leaves(back.params)):
        assert a.dtype == b.dtype and np.array_equal(a, b), jax.tree_util.keystr(path)


@pytest.mark.parametrize("backend", ["e3j", "e3nn"])
def test_v2_writer_round_trip_of_a_mace_ase_model(backend):
    """A model mace-ase made (non-default radial widths) survives write + read to within float64 roundoff."""
    from mace_ase.formats.mlip_v2 import model_from_mlip_v2

    model = small_model(atomic_numbers=(1, 6, 8))
    hyperparams, flat = mlip_v2_from_model(model, backend=backend)
    assert hyperparams["config"]["symmetric_contraction_backend"] == backend
    back = model_from_mlip_v2(json.loads(json.dumps(hyperparams)), flat)
    assert back.config == model.config
    for a, b in zip(jax.tree.leaves(model.params), jax.tree.leaves(back.params)):
        np.testing.assert_allclose(b, a, rtol=1e-14, atol=1e-15)


@pytest.mark.x64
def test_e3j_product_basis_is_equivariant():
    """The e3j coupling tensors built here are equivariant: rotating x rotates each power's output."""
    import e3nn_jax as e3nn

    irreps = tuple(ir for _, ir in e3nn.Irreps.spherical_harmonics(2))
    basis = e3j_product_basis(irreps, 3, irreps)
    rotation = np.asarray(e3nn.rand_matrix(jax.random.key(1), ()), np.float64)
    source = e3nn.Irreps([(1, ir) for ir in irreps])
    d_in = np.asarray(source.D_from_matrix(rotation), np.float64)
    x = np.random.default_rng(0).standard_normal(source.dim)
    for (order, ir), u in basis.items():
        d_out = np.asarray(e3nn.Irreps([(1, ir)]).D_from_matrix(rotation), np.float64)
        letters = "pqr"[:order]
        power = lambda v: np.einsum(f"{letters}ki," + ",".join(letters) + "->ki", u, *([v] * order))  # noqa: E731
        np.testing.assert_allclose(power(d_in @ x), power(x) @ d_out.T, atol=1e-12)
    # as many terms as e3nn's basis of all equivariant maps (0e+1o)^(x3) -> 0e
    small = e3j_product_basis(irreps[:2], 3, (e3nn.Irrep("0e"),))
    full = e3nn.reduced_tensor_product_basis([e3nn.Irreps("0e+1o")] * 3, keep_ir=["0e"])
    assert small[(3, e3nn.Irrep("0e"))].shape[-2] == full.irreps.num_irreps


# ------------------------------------------------------------------ refusals (no mlip needed)


@pytest.mark.parametrize("field, value", [
    ("gate_nodes", True),
    ("residual_connection_first_layer", True),
    ("soft_normalization", 1.5),
    ("predict_partial_charges", True),
    ("use_coulomb_term", True),
    ("use_total_charge_embedding", True),
    ("use_gaunt_tp_message_passing", True),
    ("include_pseudotensors", True),
    ("num_readout_heads", 2),
    ("symmetric_contraction_backend", "gaunt_tp"),
    ("radial_mlp_activation", "silu"),  # the variant's readout uses tanh
    ("a_field_from_the_future", 1),
])
def test_unsupported_v2_options_are_refused_by_name(field, value, tmp_path):
    hyperparams, flat, _ = golden("v2variant")
    hyperparams["config"][field] = value
    with pytest.raises(UnsupportedConfigError, match=field):
        load_archive(write_zip(tmp_path / "unsupported.zip", hyperparams, flat))


def test_multi_dataset_v2_archive_is_refused(tmp_path):
    hyperparams, flat, _ = golden("v2variant")
    single = hyperparams["dataset_info"]["atomic_energies_map"]
    hyperparams["dataset_info"]["atomic_energies_map"] = [single, single]
    with pytest.raises(UnsupportedConfigError, match="multi-dataset"):
        load_archive(write_zip(tmp_path / "multi.zip", hyperparams, flat))


def test_v2_archive_with_wrong_or_extra_parameters_says_which(tmp_path):
    hyperparams, flat, _ = golden("v2variant")
    key = next(k for k in flat if "linear_by_species_block" in k)
    bad = dict(flat, **{key: flat[key][:, :, :-1]})
    with pytest.raises(ArchiveError, match="linear_by_species_block.*shape"):
        load_archive(write_zip(tmp_path / "shape.zip", hyperparams, bad))
    extra = dict(flat, **{"params#mlip_network#layers_0#expansion_block#species_wise_gate_bias": np.zeros((10, 8))})
    with pytest.raises(ArchiveError, match="species_wise_gate_bias"):
        load_archive(write_zip(tmp_path / "extra.zip", hyperparams, extra))
    nan = dict(flat, **{key: np.full_like(flat[key], np.nan)})
    with pytest.raises(ArchiveError, match="NaN"):
        load_archive(write_zip(tmp_path / "nan.zip", hyperparams, nan))


def test_v2_carries_radial_scale_and_refuses_constants_it_cannot_express(tmp_path):
    """mlip's v2 MACE derives the radial scale from avg_r_min and always normalises the activation
    by e3nn-jax: mace-ase writes its radial_scale beside (read back exactly) and refuses a model,
    or an archive, whose constants v2 would not reproduce."""
    hyperparams, flat, _ = golden("v2variant")
    model = load_archive(write_zip(tmp_path / "variant.zip", hyperparams, flat))
    assert model.config.avg_r_min is not None and model.config.radial_scale != 1.0
    # A value off by float32 rounding only (another XLA's) is the same constant: kept exactly.
    nudged = model.config.radial_scale * (1 + 2e-7)
    same = MaceModel(model.config.replace(radial_scale=nudged), model.params, dict(model.metadata))
    path = save_archive(same, tmp_path / "nudged-mace.zip", format="mlip-v2")
    assert load_archive(path).config.radial_scale == nudged
    for change, name in [({"radial_scale": model.config.radial_scale * 1.01}, "radial_scale"),
                         ({"activation_scale": 1.1}, "activation_scale")]:
        other = MaceModel(model.config.replace(**change), model.params, dict(model.metadata))
        with pytest.raises(UnsupportedConfigError, match=name):
            save_archive(other, tmp_path / "other-mace.zip", format="mlip-v2")
    hyperparams, flat = mlip_v2_from_model(model)
    with zipfile.ZipFile(path) as archive:
        metadata = json.loads(archive.read("mace_ase.json"))
    metadata["mace_ase_config"]["radial_scale"] = model.config.radial_scale * 1.01
    tampered = write_zip(tmp_path / "tampered-mace.zip", hyperparams, flat)
    with zipfile.ZipFile(tampered, "a") as archive:
        archive.writestr("mace_ase.json", json.dumps(metadata))
    with pytest.raises(UnsupportedConfigError, match="radial_scale"):
        load_archive(tampered)


def test_v2_golden_fixtures_are_small():
    assert sum(p.stat().st_size for p in GOLDEN.glob("v2*.npz")) < 200_000


# ------------------------------------------------------------------ live, against mlip

LIVE_ENERGIES = {1: -13.61, 6: -1029.87, 7: -1485.3, 8: -2042.61, 9: -2717.14, 15: -9284.2, 16: -10831.9, 17: -12577.3}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """mlip builds and saves a small v2 MACE now (e3j product, own radial widths) and
    evaluates it in float64 on a periodic box of small molecules (H C N O F P S Cl)."""
    require("mlip")
    import mlip_reference as ref
    from conftest import molecules_in_cell
    from mlip.models.model_io import save_model_to_zip

    config = dict(num_layers=2, num_channels=8, l_max=2, correlation=2, readout_irreps=("8x0e", "0e"),
                  radial_mlp_hidden=[16, 16])
    force_field = ref2.build_force_field(config, ref2.dataset_info(LIVE_ENERGIES), seed=5, readout_gain=60.0)
    names = ["CH3CH2OH", "CH3Cl", "PH3", "CH3SH", "HCN", "CF4", "H2O", "CH3NO2"]
    centres = [(x, y, z) for x in (2.5, 7.0) for y in (2.5, 7.0) for z in (2.5, 7.0)]
    box = molecules_in_cell(zip(names, centres), [[9.5, 0.0, 0.0], [0.4, 9.2, 0.0], [-0.3, 0.2, 9.4]], seed=7)
    evaluator = ref.Evaluator(force_field)
    with jax.enable_x64(True):
        expected = evaluator(force_field.params, [box])
    path = tmp_path_factory.mktemp("live") / "live-mace.zip"
    save_model_to_zip(path, force_field)
    return {"force_field": force_field, "path": path, "structures": [box], "expected": expected, "evaluator": evaluator}


@pytest.fixture
def quick_mlip_loader(monkeypatch):
    """mlip's loader runs flax's init eagerly only to learn the parameter shapes (tens of
    seconds here); the same shapes, traced, take a second."""
    from mlip.models import ForceField

    def init(cls, predictor, seed=42, inference_context=None):
        from mlip.data.helpers.dummy_init_graph import get_dummy_graph_for_model_init

        shapes = jax.eval_shape(predictor.init, jax.random.key(seed), get_dummy_graph_for_model_init())
        return cls(predictor=predictor, params=shapes, inference_context=inference_context)

    monkeypatch.setattr(ForceField, "init", classmethod(init))


def mlipaudit_load(path: Path):
    """MLIPAudit's own loader for `-m model.zip` (float64 parameters kept: x64 on)."""
    require("mlipaudit")
    from mlipaudit.benchmarks_cli import load_force_field

    with jax.enable_x64(True):
        return load_force_field(str(path))


@pytest.mark.mlip
def test_archive_mlip_writes_now_matches_mlip(live):
    model = load_archive(live["path"])
    assert model.metadata["mlip_model"] == "mace-v2" and model.config.radial_mlp_hidden == (16, 16)
    de, df, ds = differences(evaluate(model, live["structures"], "float64"), live["structures"], live["expected"])
    MEASURED[("live e3j", "float64")] = (de, df, ds)
    assert np.abs(live["expected"][0]["forces"]).max() > 1.0 and np.abs(live["expected"][0]["stress"]).max() > 1e-3
    e_tol, f_tol, s_tol = TOLERANCES["float64"]
    assert de <= e_tol and df <= f_tol and ds <= s_tol, (de, df, ds)


@pytest.mark.mlip
def test_mlipaudit_loads_what_mace_ase_writes_as_mlips_own_network(live, quick_mlip_loader, tmp_path):
    """mlip's archive -> mace-ase -> v2 archive -> MLIPAudit's loader: mlip's own network and weights, bit for bit."""
    written = save_archive(load_archive(live["path"]), tmp_path / "written-mace.zip", format="mlip-v2")
    force_field = mlipaudit_load(written)
    assert force_field.predictor.mlip_network == live["force_field"].predictor.mlip_network
    for a, b in zip(jax.tree.leaves(force_field.params), jax.tree.leaves(live["force_field"].params)):
        assert np.array_equal(np.asarray(a), np.asarray(b)) and (a.size == 0 or a.dtype == np.float32)


@pytest.mark.mlip
def test_mlipaudit_evaluates_a_mace_ase_model_as_mace_ase_does(live, quick_mlip_loader, tmp_path):
    """Weights mlip never saw (float64, not float32-representable) written by mace-ase: MLIPAudit's
    loader and mlip's network give mace-ase's float64 numbers."""
    model = load_archive(live["path"])
    rng = np.random.default_rng(11)
    model.params = jax.tree.map(lambda v: np.asarray(v, np.float64) * rng.uniform(0.9, 1.1, np.shape(v)), model.params)
    written = save_archive(model, tmp_path / "changed-mace.zip", format="mlip-v2")
    force_field = mlipaudit_load(written)
    assert force_field.predictor.mlip_network == live["force_field"].predictor.mlip_network  # same compiled program
    with jax.enable_x64(True):
        expected = live["evaluator"](force_field.params, live["structures"])
    assert abs(expected[0]["energy"] - live["expected"][0]["energy"]) > 0.1  # other weights, other numbers
    de, df, ds = differences(evaluate(model, live["structures"], "float64"), live["structures"], expected)
    MEASURED[("mace-ase weights written, MLIPAudit loader", "float64")] = (de, df, ds)
    e_tol, f_tol, s_tol = TOLERANCES["float64"]
    assert de <= e_tol and df <= f_tol and ds <= s_tol, (de, df, ds)


@pytest.mark.mlip
@pytest.mark.parametrize("backend", ["e3j", "e3nn"])
def test_written_parameter_names_and_shapes_are_mlips(backend):
    """Every parameter mlip's v2 network expects, with its shape, and nothing else: 3 layers and
    node_symmetry < l_max, and the "e3nn" backend, which no archive read above has. (Reading and
    writing share one table, and reading refuses missing, misshapen and unused parameters, so
    every mlip archive read above checks the same for its configuration.)"""
    require("mlip")
    model = small_model(atomic_numbers=(1, 8, 16), num_layers=3, l_max=2, node_symmetry=1, correlation=2, num_channels=4)
    hyperparams, flat = mlip_v2_from_model(model, backend=backend)
    info = ref2.dataset_info({1: -1.0, 8: -2.0, 16: -3.0})
    shapes = ref2.parameter_shapes(ref2.predictor(hyperparams["config"], info))
    assert {k: v.shape for k, v in flat.items()} == shapes


def teardown_module():
    for key, value in sorted(MEASURED.items()):
        print("mlip v2 parity", key, " ".join(f"{v:.2e}" for v in value))
