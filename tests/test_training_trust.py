"""Training does what its settings say: float64 really trains in float64; bad data stops before the first step.

Tiny models on rMD17 aspirin. Bad training data (a missing label, forces of the wrong shape,
NaN labels, an HDF5 file read with ``forces_key=None``) must be a named ``TrainingDataError``
raised while the data is read, in memory and streamed: no step taken, no checkpoint, no
metrics written.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import require, shared_data
from mace_ase.errors import MaceAseError
from mace_ase.training import TrainSettings, train
from mace_ase.training.errors import MissingLabelError, TrainingDataError

KCAL_PER_MOL = 0.0433641  # eV
TINY = dict(num_layers=1, num_channels=4, l_max=1, node_symmetry=1, correlation=1, readout_irreps=("4x0e", "0e"),
            num_bessel=4, radial_mlp_hidden=(8,))


def settings(tmp_path, name, train_file, **changes) -> TrainSettings:
    d = dict(train_file=str(train_file), valid_fraction=0.25, max_train_frames=8, max_valid_frames=4, batch_size=4,
             nodes_per_graph=24, edges_per_graph=420, epochs=1, warmup_steps=1, seed=1, output_dir=str(tmp_path / name), **TINY)
    d.update(changes)
    return TrainSettings.from_dict(d)


def aspirin(frames=12):
    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    return (data["nuclear_charges"], data["coords"][:frames], data["energies"][:frames] * KCAL_PER_MOL,
            data["forces"][:frames] * KCAL_PER_MOL)


# ------------------------------------------------------------------ float64 (issue 12, item 3)


def test_float64_settings_train_in_float64(tmp_path):
    """dtype="float64": float64 parameters, and a first loss that differs from the float32 run's by float32 round-off only.

    Both runs start from the same float32-exact weights (an archive of initial parameters: epochs=0), so their
    first step's loss (one step of 4 graphs) differs only by the precision it is computed in: ~1e-7 relative,
    not zero. With x64 left off, a float64 run would be the float32 run, bit for bit.
    """
    import jax

    data = str(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    start = train(settings(tmp_path, "start", data, epochs=0), log=lambda *_: None)["archive"]
    runs = {dtype: train(settings(tmp_path, dtype, data, dtype=dtype, init_from=start, max_train_frames=4), log=lambda *_: None)
            for dtype in ("float32", "float64")}
    assert not jax.config.jax_enable_x64  # on for the call only
    for dtype, summary in runs.items():
        assert summary["metrics"]["step"] == 1
        leaves = jax.tree.leaves((summary["params"], summary["ema_params"]))
        assert {str(np.asarray(x).dtype) for x in leaves} == {dtype}, dtype
    loss32, loss64 = (runs[d]["metrics"]["train_loss"] for d in ("float32", "float64"))
    assert loss64 != loss32
    assert abs(loss64 - loss32) < 1e-5 * abs(loss64)


# ------------------------------------------------------------------ bad data (issue 12, item 6)


def write_extxyz(path, nan_energy=False, nan_forces=False, energy_key="energy"):
    import ase
    import ase.io

    numbers, coords, energies, forces = aspirin()
    frames = []
    for k in range(len(energies)):
        atoms = ase.Atoms(numbers=numbers, positions=coords[k])
        f = forces[k]
        if nan_forces and k == 5:
            f = f.copy()
            f[3, 1] = np.nan
        atoms.arrays["ref_forces"] = f
        atoms.info[energy_key] = np.nan if nan_energy and k == 3 else energies[k]
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def write_structures_h5(path, bad_forces_shape=False, nan_forces=False, forces_name="forces"):
    """mlip's layout (SPICE2-curated): one group per structure, eV and Å."""
    h5py = require("h5py")
    numbers, coords, energies, forces = aspirin()
    with h5py.File(path, "w") as f:
        for k in range(len(energies)):
            g = f.create_group(f"structure_{k:03d}")
            g["elements"] = numbers
            g["positions"] = coords[k]
            fk = forces[k].copy()
            if nan_forces and k == 7:
                fk[0, 0] = np.nan
            g[forces_name] = fk[:, :2] if bad_forces_shape and k == 6 else fk
            g.attrs["energy"] = energies[k]
    return path


def write_spice_h5(path):
    """SPICE's layout: one group per molecule, conformers stacked, Hartree, Bohr, gradients."""
    h5py = require("h5py")
    numbers, coords, energies, forces = aspirin()
    with h5py.File(path, "w") as f:
        g = f.create_group("aspirin")
        g["atomic_numbers"] = numbers
        g["conformations"] = coords / 0.529177210903
        g["dft_total_energy"] = energies / 27.211386245988
        g["dft_total_gradient"] = -forces / 27.211386245988 * 0.529177210903
    return path


def assert_stopped_before_training(error_info, run_dir, *words):
    assert isinstance(error_info.value, MaceAseError) and isinstance(error_info.value, TrainingDataError)
    message = str(error_info.value)
    for word in words:
        assert word in message, (word, message)
    assert not (run_dir / "checkpoint.npz").exists() and not (run_dir / "metrics.jsonl").exists()


def test_missing_energy_key_is_named(tmp_path):
    path = write_extxyz(tmp_path / "d.xyz", energy_key="energy_dft")
    s = settings(tmp_path, "run", path, energy_key="energy_xtb", forces_key="ref_forces")
    with pytest.raises(MissingLabelError) as caught:
        train(s, log=lambda *_: None)
    assert_stopped_before_training(caught, tmp_path / "run", "d.xyz", "frame 0", "energy_xtb")


@pytest.mark.parametrize("defect, words", [("nan_energy", ["frame 3", "energy is nan"]),
                                            ("nan_forces", ["frame 5", "1 force component(s) are NaN"])])
def test_nan_labels_in_extxyz_are_named(tmp_path, defect, words):
    path = write_extxyz(tmp_path / "d.xyz", **{defect: True})
    s = settings(tmp_path, "run", path, energy_key="energy", forces_key="ref_forces")
    with pytest.raises(TrainingDataError) as caught:
        train(s, log=lambda *_: None)
    assert_stopped_before_training(caught, tmp_path / "run", *words)


@pytest.mark.parametrize("stream", [False, True])
def test_hdf5_wrong_force_shape_and_nan_forces_are_named(tmp_path, stream):
    shape = write_structures_h5(tmp_path / "shape.h5", bad_forces_shape=True)
    with pytest.raises(TrainingDataError) as caught:
        train(settings(tmp_path, "run", shape, stream=stream), log=lambda *_: None)
    assert_stopped_before_training(caught, tmp_path / "run", "structure_006", "forces of shape (21, 2)", "expected (21, 3)")
    nan = write_structures_h5(tmp_path / "nan.h5", nan_forces=True)
    with pytest.raises(TrainingDataError) as caught:
        train(settings(tmp_path, "run", nan, stream=stream), log=lambda *_: None)
    assert_stopped_before_training(caught, tmp_path / "run", "structure_007", "NaN")


@pytest.mark.parametrize("stream", [False, True])
def test_hdf5_forces_key_none_takes_the_layout_default_or_names_it(tmp_path, stream):
    """forces_key=None: the layout's default key; a file without it is a named MissingLabelError, not a KeyError later."""
    renamed = write_structures_h5(tmp_path / "renamed.h5", forces_name="ref_forces")
    with pytest.raises(MissingLabelError) as caught:
        train(settings(tmp_path, "run", renamed, stream=stream, forces_key=None), log=lambda *_: None)
    assert_stopped_before_training(caught, tmp_path / "run", "structure_000", "'forces'", "forces_key")
    spice = write_spice_h5(tmp_path / "spice.h5")
    options = {"positions_key": "conformations", "length_unit": "bohr", "forces_are_gradients": True}
    with pytest.raises(MissingLabelError) as caught:
        train(settings(tmp_path, "run", spice, stream=stream, energy_key="dft_total_energy", forces_key=None, hdf5_options=options),
              log=lambda *_: None)
    assert_stopped_before_training(caught, tmp_path / "run", "aspirin", "'wb97x_dz.forces'", "forces_key")
