"""The mace-organics card as a config file: every value of the card, the data from the (local) Hub, 2 steps.

weights/mace-organics-card.toml is checked value by value against the model card
(../shared/seed/mace-organics-model-card.md); then `mace-ase train --config` runs it in a
fresh process, as a user would, against tests/hf_server.py standing in for Hugging Face: the
data set's zip (a small sample of drug-like molecules in SPICE2-curated's HDF5 layout) is
downloaded into the Hugging Face cache, unpacked, streamed, and the card architecture takes
2 steps (the batch is made small for CI: 2 graphs; everything else is the card's).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import REPO, require, shared_data, shared_file
from hf_server import LocalHub, closed_port_url
from mace_ase.training import TrainSettings

CARD_CONFIG = REPO / "weights" / "mace-organics-card.toml"


def _card_table(text: str) -> dict:
    """`| name | value | ...` rows of the model card's tables -> {name: value} (backticks and quotes stripped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip().strip("`") for c in line.split("|") if c.strip()]  # the card sits in an outer table: empty cells
        if len(cells) >= 2 and not cells[0].startswith("-"):
            rows[cells[0]] = cells[1]
    return rows


def test_card_config_holds_every_value_of_the_model_card():
    card = shared_file("seed", "mace-organics-model-card.md").read_text()
    table = _card_table(card)
    s = TrainSettings.from_file(CARD_CONFIG)
    architecture = {"num_layers": s.num_layers, "num_channels": s.num_channels, "l_max": s.l_max, "node_symmetry": s.node_symmetry,
                    "correlation": s.correlation, "num_bessel": s.num_bessel, "atomic_energies": s.atomic_energies}
    for name, value in architecture.items():
        assert str(value) == table[name], name
    assert json.loads(table["readout_irreps"]) == list(s.readout_irreps)
    optimiser = {"init_learning_rate": s.init_learning_rate, "peak_learning_rate": s.peak_learning_rate,
                 "final_learning_rate": s.final_learning_rate, "weight_decay": s.weight_decay, "warmup_steps": s.warmup_steps,
                 "transition_steps": s.transition_steps, "grad_norm": s.grad_norm,
                 "num_gradient_accumulation_steps": s.gradient_accumulation_steps}
    for name, value in optimiser.items():
        assert float(value) == float(table[name]), name
    dataset = {"graph_cutoff_angstrom": s.cutoff, "max_n_node": s.nodes_per_graph, "max_n_edge": s.edges_per_graph, "batch_size": s.batch_size}
    for name, value in dataset.items():
        assert float(value) == float(table[name]), name
    # The training paragraph: 220 epochs, EMA 0.99, energy 40 / forces 1000 flipped at epoch 115.
    assert f"over {s.epochs} epochs" in card and f"decay rate of {s.ema_decay}" in card
    assert (s.energy_weight, s.forces_weight, s.energy_weight_after, s.forces_weight_after) == (40, 1000, 1000, 40)
    assert re.search(rf"At epoch {s.swap_epoch}, these weights are flipped", card)
    assert "SPICE2_curated" in card and s.train_file == "spice2-curated:train" and s.valid_file == "spice2-curated:valid"
    assert s.stream and s.radial_mlp_hidden == (64, 64, 64) and s.scaling == "none"  # mlip's fixed radial MLP and default scaling


def _sample_zip() -> bytes:
    """xtb_druglike molecules of at most 14 atoms in mlip's HDF5 layout (eV, Å): train and valid files in one zip."""
    import ase.io

    h5py = require("h5py")
    frames = [a for a in ase.io.read(shared_data("xtb_druglike", "xtb_druglike_train.xyz"), ":") if len(a) <= 14]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for part, picked in (("train", frames[:6:]), ("valid", frames[-3:])):
            raw = io.BytesIO()
            with h5py.File(raw, "w") as f:
                for k, atoms in enumerate(picked):
                    g = f.create_group(f"{part}_{k}")
                    g["elements"] = atoms.numbers
                    g["positions"] = atoms.positions
                    g["forces"] = atoms.arrays["forces"] if "forces" in atoms.arrays else atoms.get_forces()
                    g.attrs["energy"] = atoms.info["energy"] if "energy" in atoms.info else atoms.get_potential_energy()
            archive.writestr(f"SPICE2_curated/SPICE2_curated_{part}.h5", raw.getvalue())
    return buffer.getvalue()


@pytest.fixture
def hub():
    server = LocalHub()
    server.add_file("InstaDeepAI/SPICE2-curated", "SPICE2_curated.zip", _sample_zip(), repo_type="dataset")
    yield server
    server.stop()


def test_card_config_trains_two_steps_on_data_from_the_hub(tmp_path, hub):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO))
    out = tmp_path / "card-run"
    command = [sys.executable, "-m", "mace_ase.cli.main", "train", "--config", str(CARD_CONFIG), "--quiet", "--output-dir", str(out),
               "--set", "batch_size=2", "--set", "max_train_frames=4", "--set", "epochs=1"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert [r for r in hub.requests if "/resolve/" in r[1]][-1][1] == "/datasets/InstaDeepAI/SPICE2-curated/resolve/main/SPICE2_curated.zip"
    cached = list((tmp_path / "hf" / "hub").glob("datasets--InstaDeepAI--SPICE2-curated/snapshots/*/SPICE2_curated.zip"))
    assert len(cached) == 1
    unpacked = list((tmp_path / "cache" / "mace-ase" / "datasets").glob("SPICE2_curated-*/SPICE2_curated/*.h5"))
    assert sorted(p.name for p in unpacked) == ["SPICE2_curated_train.h5", "SPICE2_curated_valid.h5"]

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 2 and (rows[0]["energy_weight"], rows[0]["forces_weight"]) == (40.0, 1000.0)
    assert rows[0]["learning_rate"] == pytest.approx(0.01)
    from mace_ase.archive import load_archive

    model = load_archive(out / "model.zip")
    c = model.config
    assert (c.num_layers, c.num_channels, c.l_max, c.node_symmetry, c.correlation, c.num_bessel, c.cutoff) == (2, 128, 3, 3, 2, 8, 5.0)
    assert c.readout_irreps == ("16x0e", "0e") and c.radial_mlp_hidden == (64, 64, 64)
    assert (c.scaling_mean, c.scaling_std) == (0.0, 1.0)
    assert model.metadata["training"]["ema_decay"] == 0.99 and model.metadata["training"]["swap_epoch"] == 115
    # E0 "average": least squares over the 4 training frames actually used.
    import ase.io

    frames = [a for a in ase.io.read(shared_data("xtb_druglike", "xtb_druglike_train.xyz"), ":") if len(a) <= 14][:4]
    counts = np.array([[np.sum(a.numbers == z) for z in c.atomic_numbers] for a in frames], float)
    energies = np.array([a.info.get("energy", None) if "energy" in a.info else a.get_potential_energy() for a in frames])
    np.testing.assert_allclose(counts @ np.asarray(c.atomic_energies), counts @ np.linalg.lstsq(counts, energies, rcond=None)[0], rtol=1e-10)


def test_data_set_download_errors_are_named(tmp_path, monkeypatch):
    """Offline with an empty cache, or an unreachable Hub: the models' named errors, worded for a data set."""
    import huggingface_hub.constants as hf_constants
    import huggingface_hub.utils._http as hf_http

    from mace_ase.errors import DownloadError
    from mace_ase.training.datasets import resolve_data_file

    # huggingface_hub reads HF_HUB_OFFLINE once, at import (here: now, before the variable is set).
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_http.time, "sleep", lambda seconds: None)  # its retry back-off
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match=r"data set 'spice2-curated' is not in the Hugging Face cache.*datasets/InstaDeepAI/SPICE2-curated"):
        resolve_data_file("spice2-curated:train")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    with pytest.raises(DownloadError, match="could not download data set 'spice2-curated'"):
        resolve_data_file("spice2-curated:train")
    assert resolve_data_file("data/train.h5") == "data/train.h5"  # anything else is a path
