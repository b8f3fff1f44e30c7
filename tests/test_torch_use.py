"""Imported mace-torch models everywhere a model goes: calculator, load_model, CLI, convert,
descriptors, Hessian, batches, fine-tuning; and what the importer refuses, by name."""

from __future__ import annotations

import dataclasses
import zipfile
from pathlib import Path

import ase
import ase.io
import jax
import numpy as np
import pytest
from ase.stress import full_3x3_to_voigt_6_stress
from click.testing import CliRunner
from conftest import require, shared_data, shared_file

from mace_ase.archive import load_archive
from mace_ase.calculator import MaceCalculator
from mace_ase.errors import ArchiveError, UnsupportedConfigError
from mace_ase.formats import detect, mace_torch
from mace_ase.weights import load_model

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_torch"


def golden_structures(name):
    with np.load(GOLDEN / f"{name}.npz") as npz:
        data = {key: npz[key] for key in npz.files}
    atoms = [ase.Atoms(numbers=data[f"{k}/numbers"], positions=data[f"{k}/positions"], cell=data[f"{k}/cell"],
                       pbc=data[f"{k}/pbc"]) for k in range(2)]
    return atoms, data


# ------------------------------------------------------------------ loading and converting


def test_formats_are_detected_from_the_contents(tmp_path):
    assert detect(GOLDEN / "two_heads.model") == "mace_torch"
    assert detect(GOLDEN / "density_zbl_agnesi.pt") == "mace_torch"
    assert detect(Path(__file__).parent / "data" / "golden" / "card16.zip") == "mlip_v1"
    renamed = tmp_path / "model.zip"  # the name does not matter
    renamed.write_bytes((GOLDEN / "two_heads.model").read_bytes())
    assert detect(renamed) == "mace_torch"


def test_heads_are_chosen_by_name():
    model = load_model(GOLDEN / "two_heads.model")
    assert model.metadata["head"] == "dft" and model.metadata["heads"] == ["pt_head", "dft"]  # first non-pt head
    pt = load_model(GOLDEN / "two_heads.model", head="pt_head")
    assert pt.metadata["head"] == "pt_head"
    assert pt.config.atomic_energies != model.config.atomic_energies
    with pytest.raises(UnsupportedConfigError, match=r"no head named 'nope'.*pt_head.*dft"):
        load_model(GOLDEN / "two_heads.model", head="nope")


def test_state_dict_with_hyperparameters_gives_the_same_model():
    """torch.save(model.state_dict()) + a JSON of extract_config_mace_model's keys."""
    whole = load_archive(GOLDEN / "density_zbl_agnesi.model")
    from_state = load_archive(GOLDEN / "density_zbl_agnesi.pt")  # finds density_zbl_agnesi.json beside it
    assert from_state.config == whole.config
    for a, b in zip(jax.tree.leaves(from_state.params), jax.tree.leaves(whole.params)):
        np.testing.assert_array_equal(a, b)


def test_state_dict_without_hyperparameters_says_what_is_needed(tmp_path):
    path = tmp_path / "weights.pt"
    path.write_bytes((GOLDEN / "density_zbl_agnesi.pt").read_bytes())
    with pytest.raises(ArchiveError, match=r"hyper-parameters are needed beside it as weights\.json"):
        load_archive(path)


def test_convert_writes_an_archive_that_loads_without_conversion(tmp_path, monkeypatch):
    from mace_ase.cli.main import main

    out = tmp_path / "dft.zip"
    result = CliRunner().invoke(main, ["convert", str(GOLDEN / "two_heads.model"), "-o", str(out), "--head", "dft"])
    assert result.exit_code == 0, result.output
    assert "head 'dft'" in result.output
    assert detect(out) == "mace_ase"  # mlip v1 cannot express this model: mace-ase's own format
    # Loading it never touches the mace-torch reader.
    monkeypatch.setattr(mace_torch, "read", lambda *a, **k: pytest.fail("converted archive re-converted"))
    converted = load_archive(out)
    monkeypatch.undo()
    direct = load_archive(GOLDEN / "two_heads.model", head="dft")
    assert converted.config == direct.config
    for a, b in zip(jax.tree.leaves(converted.params), jax.tree.leaves(direct.params)):
        np.testing.assert_array_equal(a, b)
    assert converted.metadata["head"] == "dft" and converted.metadata["converted_from"] == "mace-torch"
    assert load_archive(out, head="dft").metadata["head"] == "dft"
    with pytest.raises(UnsupportedConfigError, match="pt_head"):
        load_archive(out, head="pt_head")


def test_convert_refuses_what_it_cannot_read(tmp_path):
    from mace_ase.cli.main import main

    bad = tmp_path / "bad.model"
    bad.write_bytes(b"junk")
    result = CliRunner().invoke(main, ["convert", str(bad), "-o", str(tmp_path / "out.zip")], standalone_mode=True)
    assert result.exit_code != 0 and "truncated or corrupt" in result.output
    assert not (tmp_path / "out.zip").exists()


def test_cli_eval_takes_a_model_file(tmp_path):
    """`mace-ase eval --model x.model`: a batch (molecule + periodic cell) in one compiled call."""
    from mace_ase.cli.main import main

    atoms, data = golden_structures("residual_first")
    frames = tmp_path / "frames.xyz"
    ase.io.write(frames, atoms)
    out = tmp_path / "out.xyz"
    result = CliRunner().invoke(main, ["eval", str(frames), "--model", str(GOLDEN / "residual_first.model"),
                                       "--dtype", "float64", "-o", str(out)])
    assert result.exit_code == 0, result.output
    evaluated = ase.io.read(out, ":")
    assert len(evaluated) == 2
    for k, frame in enumerate(evaluated):
        # extended XYZ keeps positions to 1e-8 Å: the energy moves by ~1e-10 relative, not more
        assert frame.info["MACE_energy"] == pytest.approx(float(data[f"Default/{k}/energy"]), rel=1e-8)
        forces = data[f"Default/{k}/forces"]
        np.testing.assert_allclose(frame.arrays["MACE_forces"], forces, rtol=0, atol=1e-6 * np.abs(forces).max())


def test_cli_relax_takes_a_model_file(tmp_path):
    """`mace-ase relax --model x.model`: the imported model drives an optimiser to a minimum."""
    from mace_ase.cli.main import main

    atoms, _ = golden_structures("off_l1")
    start = tmp_path / "start.xyz"
    ase.io.write(start, atoms[0])
    out = tmp_path / "relaxed.xyz"
    result = CliRunner().invoke(main, ["relax", str(start), "--model", str(GOLDEN / "off_l1.model"), "--dtype",
                                       "float64", "--fmax", "0.01", "--steps", "300", "-o", str(out)])
    assert result.exit_code == 0, result.output
    relaxed = ase.io.read(out)
    relaxed.calc = MaceCalculator(str(GOLDEN / "off_l1.model"), dtype="float64")
    assert np.abs(relaxed.get_forces()).max() < 0.0101  # (positions written to 1e-8 Å)
    assert np.abs(relaxed.positions - atoms[0].positions).max() > 1e-3  # it moved


def test_batches_match_mace_torch():
    """calculate_batch of an imported model: a molecule and a periodic cell together, float64,
    and two periodic cells with stress, against mace-torch's numbers."""
    atoms, data = golden_structures("density_zbl_agnesi")
    calc = MaceCalculator(str(GOLDEN / "density_zbl_agnesi.model"), dtype="float64")
    results = calc.calculate_batch(atoms + [atoms[0].copy()], properties=("energy", "forces"))
    for result, expected in zip(results, [0, 1, 0], strict=True):
        assert result["energy"] == pytest.approx(float(data[f"Default/{expected}/energy"]), rel=1e-10, abs=0)
        forces = data[f"Default/{expected}/forces"]
        np.testing.assert_allclose(result["forces"], forces, rtol=0, atol=1e-10 * np.abs(forces).max())
    cell = atoms[1]
    shifted = cell.copy()
    shifted.translate([0.3, -0.2, 0.1])  # the same crystal: same energy and stress
    for result in calc.calculate_batch([cell, shifted], properties=("energy", "forces", "stress")):
        stress = full_3x3_to_voigt_6_stress(data["Default/1/stress"])
        np.testing.assert_allclose(result["stress"], stress, rtol=0, atol=1e-10 * np.abs(stress).max())


# ------------------------------------------------------------------ the calculator's other outputs


@pytest.fixture(scope="module")
def torch_density_calc():
    """mace-torch's own calculator on the density + ZBL + Agnesi golden model (float64)."""
    torch = require("torch")
    require("mace")
    from mace.calculators import MACECalculator

    return MACECalculator(models=torch.load(GOLDEN / "density_zbl_agnesi.model", weights_only=False),
                          device="cpu", default_dtype="float64")


@pytest.fixture(scope="module")
def density_calc():
    return MaceCalculator(str(GOLDEN / "density_zbl_agnesi.model"), dtype="float64")


def test_descriptors_match_mace_torch(torch_density_calc, density_calc):
    """Every layer's node features, all irreps (the edge-vector convention is mace-torch's),
    against mace-torch's get_descriptors."""
    molecule = golden_structures("density_zbl_agnesi")[0][0]
    for invariants_only in (True, False):
        for num_layers in (1, -1):
            ours = density_calc.get_descriptors(molecule, invariants_only=invariants_only, num_layers=num_layers)
            theirs = torch_density_calc.get_descriptors(molecule, invariants_only=invariants_only,
                                                        num_layers=num_layers)
            assert ours.shape == theirs.shape
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-12 * np.abs(theirs).max())


def test_hessian_matches_mace_torch(torch_density_calc, density_calc):
    """The second derivatives (ZBL included) against mace-torch's compute_hessian, float64."""
    molecule = golden_structures("density_zbl_agnesi")[0][0][:5]  # mace-torch takes a vjp per row
    ours = density_calc.get_hessian(molecule)
    theirs = np.asarray(torch_density_calc.get_hessian(molecule)).reshape(3 * len(molecule), 3 * len(molecule))
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-10 * np.abs(theirs).max())
    np.testing.assert_allclose(ours, ours.T, rtol=0, atol=1e-12 * np.abs(ours).max())


# ------------------------------------------------------------------ fine-tuning


@pytest.mark.x64
def test_a_stored_basis_moves_onto_e3nn_jax_basis_with_the_same_numbers():
    """without_stored_basis (what fine-tuning does to a float32-computed basis): same model, exact basis."""
    from mace_ase.model.basis import without_stored_basis

    atoms, data = golden_structures("off_l2")
    stored = mace_torch.read(GOLDEN / "off_l2.model", product_basis="stored")
    assert stored.config.stored_product_basis
    config, params = without_stored_basis(stored.config, stored.params)
    assert not config.stored_product_basis and config.symmetric_tensor_product_basis
    assert not any("u" in key for layer in params["layers"] for key in layer["product"])
    moved = dataclasses.replace(stored, config=config, params=params)
    for model in (stored, moved):
        results = MaceCalculator(model, dtype="float64").calculate_batch(atoms)
        for k, result in enumerate(results):
            assert result["energy"] == pytest.approx(float(data[f"Default/{k}/energy"]), rel=1e-12)
            forces = data[f"Default/{k}/forces"]
            np.testing.assert_allclose(result["forces"], forces, rtol=0, atol=1e-11 * np.abs(forces).max())


def test_fine_tuning_starts_from_a_model_file(tmp_path):
    """mace_ase.training with init_from a .model file (a small mace-torch model, H C N O)."""
    from mace_ase.training import TrainSettings, train

    source = GOLDEN / "off_l1.model"
    base = load_archive(source)
    s = TrainSettings(
        train_file=str(shared_data("rmd17", "rmd17_aspirin_train_01.npz")), valid_fraction=0.2,
        max_train_frames=8, max_valid_frames=4, seed=0, init_from=str(source), batch_size=4,
        nodes_per_graph=24, edges_per_graph=420, epochs=1, swap_epoch=None, warmup_steps=1,
        init_learning_rate=1e-3, peak_learning_rate=1e-3, final_learning_rate=1e-3, transition_steps=1,
        output_dir=str(tmp_path / "run"), model_name="off-tuned",
    )
    summary = train(s, log=lambda *_: None)
    tuned = load_archive(summary["archive"])
    assert detect(summary["archive"]) == "mace_ase"  # mace-torch physics: mace-ase's own format
    assert tuned.config == base.config  # the architecture, constants and statistics of the file
    assert np.isfinite(summary["metrics"]["valid_forces_mae_meV_A"])
    changed = [not np.array_equal(a, np.asarray(b, np.float32))
               for a, b in zip(jax.tree.leaves(tuned.params), jax.tree.leaves(base.params))]
    assert sum(changed) > 0.9 * len(changed)


# ------------------------------------------------------------------ licences


@pytest.fixture
def no_acceptance(tmp_path, monkeypatch):
    monkeypatch.setenv("MACE_ASE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.delenv("MACE_ASE_ACCEPT_LICENSE", raising=False)


def test_a_published_asl_file_is_gated_and_its_conversion_keeps_the_licence(tmp_path, no_acceptance):
    """A file under MACE-OFF23's published name (ASL) passes the one licence gate, however it is
    loaded; `mace-ase convert` writes an archive that carries the licence and is gated again."""
    from mace_ase.cli.main import main
    from mace_ase.errors import LicenseNotAcceptedError

    path = tmp_path / "MACE-OFF23_medium.model"
    path.write_bytes((GOLDEN / "off_l1.model").read_bytes())
    with pytest.raises(LicenseNotAcceptedError, match="ASL"):
        load_model(path)
    with pytest.raises(LicenseNotAcceptedError):
        MaceCalculator(load_archive(path))  # read without the gate, then handed over
    refused = CliRunner().invoke(main, ["convert", str(path), "-o", str(tmp_path / "no.zip")])
    assert refused.exit_code != 0 and not (tmp_path / "no.zip").exists()

    out = tmp_path / "off.zip"
    result = CliRunner().invoke(main, ["convert", str(path), "-o", str(out), "--accept-license"])
    assert result.exit_code == 0, result.output
    converted = load_archive(out)
    assert converted.metadata["commercial_use"] is False and "ASL" in converted.metadata["license"]
    with pytest.raises(LicenseNotAcceptedError):
        load_model(out)
    assert load_model(out, accept_license=True).config == load_archive(path).config


# ------------------------------------------------------------------ refusals


@pytest.fixture(scope="module")
def spice_spec():
    return mace_torch.read_model_file(shared_file("models", "MACE_SPICE.model"))


@pytest.mark.parametrize("change, message", [
    (dict(model_class="PolarMACE"), "model class PolarMACE"),
    (dict(interaction_classes=["RealAgnosticInteractionBlock", "RealAgnosticResidualNonLinearInteractionBlock"]),
     "RealAgnosticResidualNonLinearInteractionBlock in layer 1"),
    (dict(interaction_classes=["RealAgnosticAttResidualInteractionBlock", "RealAgnosticResidualInteractionBlock"]),
     "RealAgnosticAttResidualInteractionBlock in layer 0"),
    (dict(interaction_classes=["RealAgnosticDensityInteractionBlock", "RealAgnosticResidualInteractionBlock"]),
     "mix two message normalisations"),
    (dict(options={"apply_cutoff": False}), "apply_cutoff=False"),
    (dict(options={"edge_irreps": "128x0e+128x1o"}), "edge_irreps"),
    (dict(options={"embedding_specs": {"total_charge": {}}}), "embedding_specs"),
    (dict(options={"use_agnostic_product": True}), "use_agnostic_product=True"),
    (dict(options={"use_so3": True}), "use_so3=True"),
    (dict(options={"product_class": "cuequivariance_torch.SymmetricContraction"}), "cuequivariance"),
    (dict(correlation=[4, 4]), "correlation"),
    (dict(gate="tanh"), "gate=tanh"),
    (dict(radial_type="GaussianBasis"), "radial basis GaussianBasis"),
    (dict(readout_classes=["LinearReadoutBlock", "NonLinearBiasReadoutBlock"]), "readouts"),
    (dict(hidden_irreps=[(32, (0, 1)), (16, (1, -1))]), "hidden irreps"),
    (dict(interaction_classes=["RealAgnosticInteractionBlock"]), "a single interaction"),
])
def test_unsupported_models_are_refused_by_name(spice_spec, change, message):
    options = {**spice_spec.options, **change.pop("options", {})}
    spec = dataclasses.replace(spice_spec, options=options, **change)
    with pytest.raises(UnsupportedConfigError, match=message.replace("(", r"\(")):
        mace_torch.check_supported(spec)


def test_an_unknown_module_class_is_refused_with_its_name(tmp_path):
    """A pickle of another mace-torch model class: read as an inert record, refused by the converter."""
    # GLOBAL, EMPTY_TUPLE, NEWOBJ, {"_modules": {}} via MARK/SETITEMS, BUILD, STOP
    data = (b"\x80\x02cmace.modules.models\nAtomicDipolesMACE\n)\x81}(X\x08\x00\x00\x00_modules}ub.")
    path = tmp_path / "dipoles.model"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("dipoles/data.pkl", data)
    with pytest.raises(UnsupportedConfigError, match="unsupported mace-torch model class AtomicDipolesMACE"):
        load_archive(path)
