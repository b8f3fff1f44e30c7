"""The training loop end to end on a tiny model: learning, schedule, EMA, resume, crash safety, export."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest

from conftest import require, shared_data, subprocess_env
from mace_ase.heap import TRAINING_TUNABLES, training_tunables_missing
from mace_ase.training import TrainSettings, train
from mace_ase.training import checkpoint as checkpoint_module
from mace_ase.training.metrics import read_metrics

EPOCHS = 10
SWAP = 7


def settings(tmp_path, name, **changes) -> TrainSettings:
    s = TrainSettings(
        train_file=str(shared_data("rmd17", "rmd17_aspirin_train_01.npz")),
        valid_fraction=0.1, max_train_frames=24, max_valid_frames=8, seed=0,
        num_channels=8, l_max=1, node_symmetry=1, correlation=2, readout_irreps=("4x0e", "0e"), num_bessel=4,
        radial_mlp_hidden=(64, 64, 64),  # mlip's fixed radial MLP: the export test loads the archive in mlip
        scaling="rms_forces", batch_size=8, nodes_per_graph=24, edges_per_graph=420,
        epochs=EPOCHS, swap_epoch=SWAP, warmup_steps=2, init_learning_rate=0.002, peak_learning_rate=0.01,
        final_learning_rate=0.01, transition_steps=10, ema_decay=0.9,
        output_dir=str(tmp_path / name), model_name="tiny-test",
    )
    for k, v in changes.items():
        setattr(s, k, v)
    return s


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("train")
    s = settings(tmp, "full")
    return s, train(s, log=lambda *_: None)


def test_tiny_run_learns_and_swaps_weights(reference_run):
    s, summary = reference_run
    rows = read_metrics(os.path.join(s.output_dir, "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == list(range(EPOCHS))
    assert [(r["energy_weight"], r["forces_weight"]) for r in rows] == [(40.0, 1000.0)] * SWAP + [(1000.0, 40.0)] * (EPOCHS - SWAP)
    first, last = rows[0], rows[-1]
    assert last["valid_forces_mae_meV_A"] < 0.8 * first["valid_forces_mae_meV_A"]
    assert last["valid_forces_rmse_meV_A"] < first["valid_forces_rmse_meV_A"]
    assert rows[-1]["step"] == EPOCHS * 3  # 24 frames / 8 per batch
    assert os.path.getsize(os.path.join(s.output_dir, "metrics.png")) > 5000
    assert summary["epochs_completed"] == EPOCHS and not summary["stopped_early"]


def test_ema_is_the_bias_corrected_average(reference_run):
    _, summary = reference_run
    raw, ema = jax.tree.leaves(summary["params"]), jax.tree.leaves(summary["ema_params"])
    assert all(a.shape == b.shape for a, b in zip(raw, ema))
    differences = [float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(raw, ema)]
    assert max(differences) > 1e-4  # the average lags behind the raw parameters


def test_one_training_step_updates_ema_by_the_formula(tmp_path, reference_run):
    from mace_ase.training import trainer
    from mace_ase.training.batching import iterate_batches
    from mace_ase.training.ema import ema_init
    from mace_ase.training.optimizer import make_optimizer

    s = settings(tmp_path, "ema")
    prep = trainer.prepare(s)
    optimizer = make_optimizer(trainer.optimizer_settings(s))
    steps = trainer.compiled_steps(prep.train_config, trainer.optimizer_settings(s), s.ema_decay)  # compiled by the reference run
    params = prep.init_params
    state = (params, optimizer.init(params), ema_init(params))
    d = prep.train
    batch = next(iterate_batches(d.structures, d.energies, d.forces, prep.shape))
    p1, opt_state, ema, _ = steps.train_step(*jax.tree.map(np.array, state), batch, np.float32(40), np.float32(1000))
    p1 = jax.tree.map(np.array, p1)
    p2, _, ema, _ = steps.train_step(jax.tree.map(np.array, p1), opt_state, ema, batch, np.float32(40), np.float32(1000))
    expected = jax.tree.map(lambda a, b: (0.9 * 0.1 * a + 0.1 * b) / (1 - 0.9**2), p1, p2)
    for e, got, new in zip(jax.tree.leaves(expected), jax.tree.leaves(steps.ema_params(ema)), jax.tree.leaves(p2)):
        np.testing.assert_allclose(got, e, rtol=1e-5, atol=1e-7)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(steps.ema_params(ema)), jax.tree.leaves(p2)))


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_parameters(tmp_path, reference_run):
    _, full = reference_run
    s = settings(tmp_path, "killed")

    def kill(epoch, k, n, loss):
        if epoch == 5 and k == 1:  # mid-epoch, after the epoch-1 checkpoint
            raise Killed

    with pytest.raises(Killed):
        train(s, progress=kill, log=lambda *_: None)
    assert len(read_metrics(os.path.join(s.output_dir, "metrics.jsonl"))) == 5
    with pytest.raises(FileExistsError):
        train(s, log=lambda *_: None)  # never silently overwrite a run
    resumed = train(s, resume=True, log=lambda *_: None)
    for a, b in zip(jax.tree.leaves(full["params"]), jax.tree.leaves(resumed["params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    for a, b in zip(jax.tree.leaves(full["ema_params"]), jax.tree.leaves(resumed["ema_params"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6)
    assert [r["epoch"] for r in read_metrics(os.path.join(s.output_dir, "metrics.jsonl"))] == list(range(EPOCHS))


def test_crash_while_writing_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.npz"
    good = {"w": np.arange(6.0).reshape(2, 3)}
    checkpoint_module.save_checkpoint(path, good, {"epoch": 3})

    def crashing_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")  # some bytes hit the disk, then the process dies
        raise Killed

    monkeypatch.setattr(checkpoint_module.np, "savez", crashing_savez)
    with pytest.raises(Killed):
        checkpoint_module.save_checkpoint(path, {"w": np.zeros((2, 3))}, {"epoch": 4})
    monkeypatch.undo()
    state, meta = checkpoint_module.load_checkpoint(path, {"w": np.zeros((2, 3))})
    assert meta["epoch"] == 3
    np.testing.assert_array_equal(state["w"], good["w"])

    def crashing_replace(src, dst):
        raise Killed

    from mace_ase import fileio

    monkeypatch.setattr(fileio.os, "replace", crashing_replace)  # the rename that publishes the new checkpoint
    with pytest.raises(Killed):
        checkpoint_module.save_checkpoint(path, {"w": np.ones((2, 3))}, {"epoch": 5})
    monkeypatch.undo()
    assert checkpoint_module.load_checkpoint(path, {"w": np.zeros((2, 3))})[1]["epoch"] == 3
    with pytest.raises(ValueError, match="does not match"):
        checkpoint_module.load_checkpoint(path, {"w": np.zeros((3, 3))})


def test_exported_archive_loads_in_calculator_and_mlip(reference_run):
    import ase

    from mace_ase.archive import load_archive
    from mace_ase.calculator import MaceCalculator
    from mace_ase.training.data import read_rmd17, split_frames

    s, summary = reference_run
    archive = summary["archive"]
    model = load_archive(archive)
    assert model.config == summary["config"]
    assert model.metadata["name"] == "tiny-test" and model.metadata["license"] == "MIT"
    # The run trained on energies with E0 removed (float32) and validated its EMA parameters;
    # the archive (E0 put back) must reproduce that validation error frame by frame.
    valid = split_frames(read_rmd17(s.train_file), s.valid_fraction, s.seed)[1][: s.max_valid_frames]
    calc = MaceCalculator(archive, dtype="float64")
    energies, forces = [], []
    for frame in valid:
        atoms = ase.Atoms(numbers=frame.numbers, positions=frame.positions)
        atoms.calc = calc
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())
    energy_mae = 1000 * np.mean(np.abs(np.array(energies) - [f.energy for f in valid]))
    force_mae = 1000 * np.mean(np.abs(np.concatenate(forces) - np.concatenate([f.forces for f in valid])))
    assert energy_mae == pytest.approx(summary["metrics"]["valid_energy_mae_meV"], abs=0.5)
    assert force_mae == pytest.approx(summary["metrics"]["valid_forces_mae_meV_A"], rel=1e-4)

    require("mlip")
    from mlip.models.model_io import load_model_from_zip
    from mlip.models_v1 import Mace
    from mlip.simulation.ase.mlip_ase_calculator import MLIPForceFieldASECalculator

    atoms = ase.Atoms(numbers=valid[0].numbers, positions=valid[0].positions)
    atoms.calc = MLIPForceFieldASECalculator(atoms=atoms, edge_capacity_multiplier=1.25, force_field=load_model_from_zip(Mace, archive))
    assert atoms.get_potential_energy() == pytest.approx(energies[0], abs=5e-3)  # mlip runs float32: ~1e-3 eV at 17,600 eV
    np.testing.assert_allclose(atoms.get_forces(), forces[0], atol=2e-4)


def test_fine_tuning_starts_from_the_archive(tmp_path, reference_run):
    from mace_ase.archive import load_archive
    from mace_ase.training import trainer

    _, summary = reference_run
    base = load_archive(summary["archive"])
    s = settings(tmp_path, "finetune", init_from=summary["archive"], epochs=1, num_channels=16)  # the archive fixes the architecture
    prep = trainer.prepare(s)
    assert prep.config == base.config  # statistics and E0 kept, not refitted
    for a, b in zip(jax.tree.leaves(base.params), jax.tree.leaves(prep.init_params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tuned = train(s, log=lambda *_: None)
    assert load_archive(tuned["archive"]).config == base.config
    # One more epoch from the trained weights: far better than a fresh model's first epoch.
    fresh_first = read_metrics(os.path.join(reference_run[0].output_dir, "metrics.jsonl"))[0]
    assert tuned["metrics"]["valid_forces_mae_meV_A"] < 0.9 * fresh_first["valid_forces_mae_meV_A"]


def test_resume_refuses_changed_settings(tmp_path, reference_run):
    import shutil

    s, _ = reference_run
    copy = tmp_path / "copy"
    shutil.copytree(s.output_dir, copy)
    with pytest.raises(ValueError, match="seed"):
        train(settings(tmp_path, "copy", seed=1), resume=True, log=lambda *_: None)


def test_cli_train_with_a_config_file(tmp_path, reference_run):
    import json

    from click.testing import CliRunner

    from mace_ase.cli.main import main

    config = settings(tmp_path, "cli").to_dict()
    config.update(epochs=1, output_dir="cli-run", _comment="relative paths are resolved against this file")
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["train", "--config", str(path), "--quiet", "--set", "archive_name=tiny.zip"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli-run" / "tiny.zip").exists()
    assert "wrote" in result.output and "force MAE" in result.output
    assert "capacity used: nodes 88%" in result.output  # 21-atom aspirin in 24-node graph slots
    # In-process (this is not `mace-ase train` starting), so glibc's default heap: train() says how to do better.
    assert ("note: on the CPU, start Python with GLIBC_TUNABLES" in result.output) == training_tunables_missing()
    bad = CliRunner().invoke(main, ["train", "--config", str(path), "--set", "no_such_option=1"])
    assert bad.exit_code != 0 and "no_such_option" in bad.output


def test_the_train_command_starts_with_the_training_heap(tmp_path):
    """`mace-ase train` re-executes itself with glibc's huge-page heap, unless the user chose a malloc tunable."""
    import json
    import subprocess
    import sys

    config = settings(tmp_path, "cli").to_dict()
    config.update(epochs=1, max_train_frames=8)
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    env = subprocess_env(tmp_path / "jax-cache")
    env.pop("GLIBC_TUNABLES", None)
    for run, own, heap in (("default", None, TRAINING_TUNABLES), ("own", "glibc.malloc.hugetlb=0", "glibc.malloc.hugetlb=0")):
        command = [sys.executable, "-m", "mace_ase.cli", "train", "--config", str(path), "--quiet", "--output-dir", str(tmp_path / run)]
        done = subprocess.run(command, env=env if own is None else {**env, "GLIBC_TUNABLES": own},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"C heap: GLIBC_TUNABLES={heap}\n" in done.stdout and "note:" not in done.stdout, done.stdout


def test_toml_config(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('train_file = "data.xyz"\nepochs = 7\nradial_mlp_hidden = [64, 64, 64]\n[hdf5_options]\nlength_unit = "bohr"\n')
    s = TrainSettings.from_file(path)
    assert s.epochs == 7 and s.radial_mlp_hidden == (64, 64, 64) and s.hdf5_options == {"length_unit": "bohr"}
    assert s.train_file == str(tmp_path / "data.xyz")
