"""Archive round trips of MaceConfig fields that mlip's hyperparams.json has no place for."""

from __future__ import annotations

import json
import zipfile

import jax
import numpy as np
import pytest
from conftest import small_model

from mace_ase.archive import load_archive, save_archive
from mace_ase.errors import ArchiveError


def test_radial_mlp_hidden_survives_the_archive(tmp_path):
    """mlip fixes the radial MLP at 64,64,64; other sizes round-trip (mace_ase.json + shapes)."""
    model = small_model(radial_mlp_hidden=(16, 24))
    path = save_archive(model, tmp_path / "radial.zip")
    loaded = load_archive(path)
    assert loaded.config.radial_mlp_hidden == (16, 24)
    assert loaded.config == model.config
    for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(model.params)):
        np.testing.assert_array_equal(a, b)
    with zipfile.ZipFile(path) as archive:
        # not an mlip hyper-parameter: mlip's Config would refuse an unknown field
        assert "radial_mlp_hidden" not in json.loads(archive.read("hyperparams.json"))["config"]
        assert json.loads(archive.read("mace_ase.json"))["mace_ase_config"]["radial_mlp_hidden"] == [16, 24]
    assert "mace_ase_config" not in loaded.metadata
    assert loaded.metadata["license"] == "MIT"


def test_radial_mlp_hidden_is_read_from_the_parameters_without_metadata(tmp_path):
    """An archive without mace_ase.json (an older writer) still loads with its real widths."""
    model = small_model(radial_mlp_hidden=(12,))
    path = save_archive(model, tmp_path / "radial.zip")
    stripped = tmp_path / "stripped.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(stripped, "w") as target:
        for name in ("hyperparams.json", "params.npz"):
            target.writestr(name, source.read(name))
    assert load_archive(stripped).config == model.config


def test_inconsistent_radial_mlp_metadata_is_an_error(tmp_path):
    model = small_model(radial_mlp_hidden=(16, 24))
    path = save_archive(model, tmp_path / "radial.zip")
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(bad, "w") as target:
        for name in ("hyperparams.json", "params.npz"):
            target.writestr(name, source.read(name))
        metadata = json.loads(source.read("mace_ase.json"))
        metadata["mace_ase_config"]["radial_mlp_hidden"] = [16, 16]
        target.writestr("mace_ase.json", json.dumps(metadata))
    with pytest.raises(ArchiveError, match="radial_mlp_hidden"):
        load_archive(bad)


def test_default_radial_mlp_writes_a_plain_mlip_archive(tmp_path):
    """The default widths are mlip's own: nothing extra is written for them."""
    model = small_model(atomic_numbers=(1, 6, 8), radial_mlp_hidden=(64, 64, 64))
    path = save_archive(model, tmp_path / "default.zip")
    with zipfile.ZipFile(path) as archive:
        assert "mace_ase_config" not in json.loads(archive.read("mace_ase.json"))
    assert load_archive(path).config == model.config
