"""Model resolution, Hugging Face downloads and the licence gate (mace_ase.weights).

The real download code (huggingface_hub.hf_hub_download) runs against a local
Hub look-alike on 127.0.0.1 (tests/hf_server.py); the Hugging Face cache and
the mace-ase config folder live in tmp dirs. No test touches the internet or
the user's folders.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

import huggingface_hub.constants as hf_constants
from conftest import REPO, shared_data, small_model
from hf_server import LocalHub, closed_port_url
from mace_ase import weights
from mace_ase.archive import load_archive, save_archive
from mace_ase.errors import (
    ArchiveError,
    DownloadError,
    LicenseNotAcceptedError,
    LicenseRelabelError,
    ModelNotFoundError,
    UnsupportedConfigError,
)
from mace_ase.weights import ModelEntry, load_model

NC = "tiny-organics"  # a non-commercial test model, served by the local hub
MIT = "tiny-mit"  # a commercial-use test model
NC_ENTRY = ModelEntry(
    NC, "mace-ase-tests/tiny-organics", "tiny_organics.zip", None, "Test non-commercial",
    "TEST-SUMMARY: research only, no commercial use.", False, "test model",
)
MIT_ENTRY = ModelEntry(MIT, "mace-ase-tests/tiny-mit", "tiny_mit.zip", None, "MIT", "MIT TERMS", True, "test model")


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="session")
def archives(tmp_path_factory) -> dict[str, bytes]:
    """Archive bytes written by mace-ase: good (v1, v2), truncated, random, unsupported config."""
    folder = tmp_path_factory.mktemp("archives")
    model = small_model(radial_mlp_hidden=(64, 64, 64))
    model.metadata.update(name=NC, license="Test non-commercial", commercial_use=False, version=1)
    good = save_archive(model, folder / "good.zip").read_bytes()
    model.metadata["version"] = 2
    v2 = save_archive(model, folder / "v2.zip").read_bytes()
    model.metadata.update(license="MIT", commercial_use=True, name=MIT)
    mit = save_archive(model, folder / "mit.zip").read_bytes()

    source = zipfile.ZipFile(io.BytesIO(good))
    hyperparams = json.loads(source.read("hyperparams.json"))
    hyperparams["config"]["gate_nodes"] = True
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as unsupported:
        for item in source.namelist():
            data = json.dumps(hyperparams) if item == "hyperparams.json" else source.read(item)
            unsupported.writestr(item, data)
    return {
        "good": good,
        "v2": v2,
        "mit": mit,
        "truncated": good[: len(good) // 2],
        "random": np.random.default_rng(0).bytes(4096),
        "unsupported": buffer.getvalue(),
    }


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Hugging Face cache, HF state and mace-ase config in tmp dirs; no real endpoint, no token."""
    for name in ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE", "HF_TOKEN", weights.ENV_ACCEPT, "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv(weights.ENV_CONFIG_DIR, str(tmp_path / "config"))
    # huggingface_hub read these environment variables at import (its public `constants` module):
    # nothing may go to huggingface.co or the user's folders, and no telemetry (user-agent look-ups).
    _point_hf_constants(monkeypatch, closed_port_url())
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(weights, "_announced", set())
    monkeypatch.setitem(weights.REGISTRY, NC, NC_ENTRY)
    monkeypatch.setitem(weights.REGISTRY, MIT, MIT_ENTRY)
    return tmp_path


@pytest.fixture
def hub(archives, monkeypatch):
    server = LocalHub()
    server.add_file(NC_ENTRY.repo_id, NC_ENTRY.filename, archives["good"])
    server.add_file(MIT_ENTRY.repo_id, MIT_ENTRY.filename, archives["mit"])
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    _point_hf_constants(monkeypatch, server.url)
    yield server
    server.stop()


def _point_hf_constants(monkeypatch, url: str) -> None:
    """What huggingface_hub derived from HF_ENDPOINT at import (its URL template must agree with ENDPOINT)."""
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def downloads(server: LocalHub) -> list[tuple[str, str]]:
    """Requests for model files (not huggingface_hub's own telemetry)."""
    return [r for r in server.requests if "/resolve/" in r[1] or "/blobs/" in r[1]]


def same_params(a, b) -> bool:
    import jax

    leaves = zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in leaves)


# ------------------------------------------------------------------ download and cache


def test_download_from_local_hub_then_offline_from_cache(hub, isolated, archives, monkeypatch, tmp_path):
    model = load_model(NC, accept_license=True)
    original = load_archive(_write(tmp_path / "orig.zip", archives["good"]))
    assert same_params(model, original) and model.config == original.config
    assert model.metadata["source"] == f"hf://{NC_ENTRY.repo_id}/{NC_ENTRY.filename}@main"
    assert model.metadata["license"] == "Test non-commercial"
    methods = [(m, p.split("/")[1 if "blobs" in p else 3]) for m, p in downloads(hub)]
    assert methods == [("HEAD", "resolve"), ("GET", "blobs")]  # metadata, then the redirected file

    path = weights.fetch_model(NC)
    assert path.read_bytes() == archives["good"]
    assert (isolated / "hf" / "hub") in path.parents  # the Hugging Face cache under HF_HOME
    [row] = [r for r in weights.models_status() if r["name"] == NC]
    assert row["path"] == str(path) and row["license_accepted"] is False and row["commercial_use"] is False

    hub.stop()
    before = len(hub.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert same_params(load_model(NC, accept_license=True), original)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert weights.fetch_model(NC, local_files_only=True) == path
    assert len(hub.requests) == before


def test_revision_pinning(hub, archives, monkeypatch):
    hub.add_file(NC_ENTRY.repo_id, NC_ENTRY.filename, archives["v2"], revision="v2")
    assert load_model(NC, accept_license=True).metadata["version"] == 1
    assert load_model(NC, accept_license=True, revision="v2").metadata["version"] == 2
    monkeypatch.setitem(weights.REGISTRY, NC, ModelEntry(**{**NC_ENTRY.__dict__, "revision": "v2"}))
    assert load_model(NC, accept_license=True).metadata["version"] == 2
    with pytest.raises(ModelNotFoundError, match="revision 'v9' does not exist"):
        load_model(NC, accept_license=True, revision="v9")


def test_registered_as_commercial_but_archive_says_non_commercial(hub, archives):
    hub.add_file(MIT_ENTRY.repo_id, MIT_ENTRY.filename, archives["good"])  # metadata: Test non-commercial
    with pytest.raises(LicenseNotAcceptedError, match=f"model '{MIT}' is licensed under the Test non-commercial"):
        load_model(MIT)
    assert load_model(MIT, accept_license=True).metadata["license"] == "Test non-commercial"


def test_commercial_model_needs_no_acceptance_and_prints_nothing(hub, capsys):
    model = load_model(MIT)
    assert model.metadata["license"] == "MIT"
    assert capsys.readouterr().err.count("MIT TERMS") == 0
    [row] = [r for r in weights.models_status() if r["name"] == MIT]
    assert row["license_accepted"] is None and row["path"]


def test_fresh_process_reads_hf_env_at_import_and_accepts_by_env(hub, isolated):
    """No monkeypatching in the child: HF_ENDPOINT / HF_HUB_OFFLINE as a user would set them."""
    script = (
        "import mace_ase.weights as w\n"
        f"w.REGISTRY[{NC!r}] = w.ModelEntry(*{tuple(NC_ENTRY.__dict__.values())!r})\n"
        f"print(w.load_model({NC!r}).metadata['source']); w.load_model({NC!r})\n"
    )
    env = {
        **os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(isolated / "hf2"),
        weights.ENV_CONFIG_DIR: str(isolated / "config2"), weights.ENV_ACCEPT: f"other, {NC}",
        "JAX_PLATFORMS": "cpu", "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"hf://{NC_ENTRY.repo_id}/{NC_ENTRY.filename}@main"
    assert run.stderr.count("TEST-SUMMARY") == 1  # shown once although loaded twice
    hub.stop()
    env["HF_HUB_OFFLINE"] = "1"
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


# ------------------------------------------------------------------ licence gate


def test_refused_without_acceptance_before_any_download(hub):
    with pytest.raises(LicenseNotAcceptedError) as caught:
        load_model(NC)
    message = str(caught.value)
    assert "Test non-commercial" in message and NC_ENTRY.license_summary in message
    assert "accept_license=True" in message
    assert f"{weights.ENV_ACCEPT}={NC}" in message
    assert f"mace-ase fetch {NC} --accept-license" in message
    assert str(weights.config_dir() / "licenses.json") in message
    assert downloads(hub) == []


def test_accepted_by_argument_prints_summary_once(hub, capsys):
    load_model(NC, accept_license=True)
    load_model(NC, accept_license=True)
    err = capsys.readouterr().err
    assert err.count(NC_ENTRY.license_summary) == 1 and "Test non-commercial" in err


@pytest.mark.parametrize("value", [NC, f"something-else, {NC.upper()} ", "all", "1"])
def test_accepted_by_environment(hub, monkeypatch, value):
    monkeypatch.setenv(weights.ENV_ACCEPT, value)
    assert weights.license_accepted(NC)
    assert load_model(NC).metadata["name"] == NC


def test_not_accepted_by_environment_naming_another_model(hub, monkeypatch):
    monkeypatch.setenv(weights.ENV_ACCEPT, "mace-organics")
    assert not weights.license_accepted(NC)
    with pytest.raises(LicenseNotAcceptedError):
        load_model(NC)


def test_accepted_by_recorded_acceptance(hub, isolated, monkeypatch):
    assert not weights.license_accepted(NC)
    path = weights.accept_license(NC)
    assert path == isolated / "config" / "licenses.json"
    record = json.loads(path.read_text())["accepted"][NC]
    assert record["license"] == "Test non-commercial" and record["accepted_at"]
    assert weights.license_accepted(NC)
    assert load_model(NC).metadata["name"] == NC
    [row] = [r for r in weights.models_status() if r["name"] == NC]
    assert row["license_accepted"] is True
    # A changed licence must be accepted again.
    monkeypatch.setitem(weights.REGISTRY, NC, ModelEntry(**{**NC_ENTRY.__dict__, "license": "Test NC v2"}))
    assert not weights.license_accepted(NC)
    with pytest.raises(LicenseNotAcceptedError, match="Test NC v2"):
        load_model(NC)


def test_config_dir_precedence(monkeypatch, tmp_path):
    assert weights.config_dir() == tmp_path / "config"
    monkeypatch.delenv(weights.ENV_CONFIG_DIR)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert weights.config_dir() == tmp_path / "xdg" / "mace-ase"
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert weights.config_dir() == tmp_path / "home" / ".config" / "mace-ase"


def test_local_archive_with_non_commercial_metadata_is_gated(archives, tmp_path, monkeypatch, capsys):
    path = _write(tmp_path / "somewhere.zip", archives["good"])  # metadata: Test non-commercial
    with pytest.raises(LicenseNotAcceptedError, match="TEST-SUMMARY"):
        load_model(path)  # the summary of the registered licence of that name
    monkeypatch.setenv(weights.ENV_ACCEPT, NC)  # the name in the archive's metadata
    assert load_model(str(path)).metadata["license"] == "Test non-commercial"
    assert capsys.readouterr().err.count("TEST-SUMMARY") == 1
    unregistered = _write(tmp_path / "other.zip", _with_metadata(archives["good"], name="lab-model", license="CC-BY-NC-4.0"))
    with pytest.raises(LicenseNotAcceptedError) as caught:
        load_model(unregistered)
    assert "CC-BY-NC-4.0" in str(caught.value) and "accept_license('lab-model')" in str(caught.value)
    assert "mace-ase fetch" not in str(caught.value)  # the CLI only knows registered names
    weights.accept_license("lab-model")
    assert load_model(unregistered).metadata["name"] == "lab-model"
    custom = _write(tmp_path / "custom.zip", _with_metadata(archives["good"], license="Custom", commercial_use=False))
    with pytest.raises(LicenseNotAcceptedError, match="'custom' is licensed under the Custom licence"):
        load_model(custom)  # no name in the metadata: named after the file
    mit = _write(tmp_path / "mit.zip", archives["mit"])
    monkeypatch.delenv(weights.ENV_ACCEPT)
    assert load_model(mit).metadata["license"] == "MIT"


def test_downloaded_file_recognised_by_registry_filename(tmp_path, archives):
    """mlip's archives carry no mace-ase metadata: a published file passed as a path is gated by its name."""
    path = _write(tmp_path / NC_ENTRY.filename, _with_metadata(archives["mit"]))  # no mace_ase.json at all
    with pytest.raises(LicenseNotAcceptedError, match=NC):
        load_model(path)
    loaded = load_model(path, accept_license=True)
    assert loaded.metadata["license"] == "Test non-commercial" and loaded.metadata["name"] == NC


# ------------------------------------------------------------------ failures


def test_server_down(isolated, monkeypatch, capsys):
    # huggingface_hub retries a failed connection five times with back-off (about 23 s of sleeping).
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    monkeypatch.setenv("HF_ENDPOINT", closed_port_url())
    start = time.perf_counter()
    with pytest.raises(DownloadError) as caught:
        load_model(NC, accept_license=True)
    message = str(caught.value)
    assert "unreachable" in message and "not in the local cache" in message
    assert f"https://huggingface.co/{NC_ENTRY.repo_id}/resolve/main/{NC_ENTRY.filename}" in message
    assert f"hf download {NC_ENTRY.repo_id} {NC_ENTRY.filename}" in message
    assert "HF_HUB_OFFLINE=1" in message and "pass its path" in message
    assert time.perf_counter() - start < 20
    assert "TEST-SUMMARY" not in capsys.readouterr().err  # terms are shown for a model that loaded


def test_missing_repository(hub, monkeypatch):
    monkeypatch.setitem(weights.REGISTRY, NC, ModelEntry(**{**NC_ENTRY.__dict__, "repo_id": "nobody/nothing"}))
    with pytest.raises(ModelNotFoundError, match="repository nobody/nothing was not found"):
        load_model(NC, accept_license=True)


def test_missing_file(hub, monkeypatch):
    monkeypatch.setitem(weights.REGISTRY, NC, ModelEntry(**{**NC_ENTRY.__dict__, "filename": "gone.zip"}))
    with pytest.raises(ModelNotFoundError, match=f"gone.zip does not exist in the Hugging Face repository {NC_ENTRY.repo_id}"):
        load_model(NC, accept_license=True)


def test_offline_with_empty_cache(hub, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="not in the Hugging Face cache .* downloads are disabled"):
        load_model(NC, accept_license=True)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(DownloadError, match="not in the Hugging Face cache"):
        weights.fetch_model(NC, local_files_only=True)
    assert all(row["path"] is None for row in weights.models_status() if row["name"] in (NC, MIT))
    assert hub.requests == []  # not even huggingface_hub's own look-ups


@pytest.mark.parametrize("kind", ["truncated", "random"])
def test_corrupt_archive_from_hub(hub, archives, kind):
    hub.add_file(NC_ENTRY.repo_id, NC_ENTRY.filename, archives[kind])
    with pytest.raises(ArchiveError) as caught:
        load_model(NC, accept_license=True)
    message = str(caught.value)
    assert "truncated or corrupt" in message and "Hugging Face cache" in message
    assert str(weights.fetch_model(NC).resolve()) in message and "force_download=True" in message


def test_damaged_cached_copy_is_repaired_by_force_download(hub, archives):
    path = weights.fetch_model(NC)
    blob = path.resolve()
    blob.write_bytes(archives["good"][:1000])  # damaged on disk after a good download
    with pytest.raises(ArchiveError, match="force_download=True"):
        load_model(NC, accept_license=True)
    assert weights.fetch_model(NC, force_download=True).read_bytes() == archives["good"]
    assert load_model(NC, accept_license=True).metadata["version"] == 1


def test_unsupported_config_passes_through(hub, archives, tmp_path):
    hub.add_file(NC_ENTRY.repo_id, NC_ENTRY.filename, archives["unsupported"])
    with pytest.raises(UnsupportedConfigError, match="gate_nodes"):
        load_model(NC, accept_license=True)
    with pytest.raises(UnsupportedConfigError, match="gate_nodes"):
        load_model(_write(tmp_path / "unsupported.zip", archives["unsupported"]), accept_license=True)


def test_unknown_names_and_missing_paths():
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'") as caught:
        load_model("no-such-model")
    assert all(name in str(caught.value) for name in ("mace-organics", "mace-ase-small-xtb", "path"))
    with pytest.raises(ModelNotFoundError, match="unknown model name 'no-such-model'.*mace-organics"):
        weights.fetch_model("no-such-model")
    with pytest.raises(ModelNotFoundError, match="no model file at some/where.zip"):
        load_model("some/where.zip")
    with pytest.raises(TypeError):
        load_model(3.5)


def test_model_object_returned_as_is():
    model = small_model(radial_mlp_hidden=(64, 64, 64))
    assert load_model(model) is model


# ------------------------------------------------------------------ bundled default


def test_bundled_default_missing(monkeypatch, tmp_path):
    from mace_ase.calculator import MaceCalculator

    monkeypatch.setattr(weights, "_bundled_root", lambda: tmp_path)  # an installation without the file
    for make in (load_model, MaceCalculator):
        with pytest.raises(ModelNotFoundError) as caught:
            make()
        message = str(caught.value)
        assert "bundled model 'mace-ase-small-xtb'" in message and "missing from this installation" in message
        assert "path to a model archive" in message and "mace-organics" in message
    [row] = [r for r in weights.models_status() if r["name"] == weights.DEFAULT_MODEL]
    assert row["path"] is None and row["bundled"]


def test_bundled_default_loads_placeholder_in_tests_only(monkeypatch, tmp_path, archives):
    from mace_ase.calculator import MaceCalculator

    placeholder = small_model(radial_mlp_hidden=(64, 64, 64))
    placeholder.metadata = {"name": "PLACEHOLDER-for-tests-only", "license": "MIT"}
    save_archive(placeholder, tmp_path / "mace-ase-small-xtb.zip")
    monkeypatch.setattr(weights, "_bundled_root", lambda: tmp_path)
    model = load_model(None)
    assert model.metadata["name"] == "PLACEHOLDER-for-tests-only"
    assert model.metadata["source"] == "bundled:mace-ase-small-xtb.zip"
    assert same_params(model, placeholder)
    assert MaceCalculator().model.metadata["name"] == "PLACEHOLDER-for-tests-only"
    assert weights.fetch_model(weights.DEFAULT_MODEL) == tmp_path / "mace-ase-small-xtb.zip"
    [row] = [r for r in weights.models_status() if r["name"] == weights.DEFAULT_MODEL]
    assert row["path"] == str(tmp_path / "mace-ase-small-xtb.zip")


def test_installed_default_is_the_tracked_model():
    """The bundled file that load_model() reads is byte for byte the repository's weights/ file."""
    import hashlib

    entry = weights.REGISTRY[weights.DEFAULT_MODEL]
    tracked = REPO / "weights" / entry.filename
    assert tracked.exists(), f"the bundled default model {tracked} is missing from the repository"
    installed = weights.fetch_model(weights.DEFAULT_MODEL)
    assert hashlib.sha256(installed.read_bytes()).hexdigest() == hashlib.sha256(tracked.read_bytes()).hexdigest()
    model = load_model(None)
    assert model.metadata["name"] == entry.name and model.metadata["license"] == entry.license == "MIT"
    assert model.config == load_archive(tracked).config


def _with_metadata(archive: bytes, **metadata) -> bytes:
    """The archive with its mace_ase.json replaced by `metadata`."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for item in source.namelist():
            if item != "mace_ase.json":
                target.writestr(item, source.read(item))
        if metadata:
            target.writestr("mace_ase.json", json.dumps(metadata))
    return buffer.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ one gate for every way in


def test_calculator_on_a_model_read_directly_is_gated(archives, tmp_path, monkeypatch):
    """MaceCalculator(load_archive(path)): the gate reads the model's metadata and its file name."""
    from mace_ase.calculator import MaceCalculator

    declared = load_archive(_write(tmp_path / "declared.zip", archives["good"]))  # metadata: non-commercial
    published = load_archive(_write(tmp_path / NC_ENTRY.filename, _with_metadata(archives["mit"])))  # no metadata
    for model in (declared, published):
        with pytest.raises(LicenseNotAcceptedError, match="Test non-commercial"):
            MaceCalculator(model)
        assert MaceCalculator(model, accept_license=True).model is model
        assert model.metadata["license"] == "Test non-commercial" and model.metadata["commercial_use"] is False
    # Accepted once (load_model), usable afterwards without accepting again; a copy saved from it stays gated.
    cleared = load_model(tmp_path / "declared.zip", accept_license=True)
    assert MaceCalculator(cleared).model is cleared
    saved = save_archive(published, tmp_path / "renamed.zip")
    with pytest.raises(LicenseNotAcceptedError, match=NC):
        load_model(saved)
    assert load_model(_write(tmp_path / "mit.zip", archives["mit"])).metadata["license"] == "MIT"


def test_derived_model_keeps_the_licence(archives, tmp_path):
    gated = load_model(_write(tmp_path / "nc.zip", archives["good"]), accept_license=True)
    derived = weights.derived_metadata(gated)
    assert derived == {
        "license": "Test non-commercial", "commercial_use": False,
        "license_summary": NC_ENTRY.license_summary, "derived_from": [NC],
    }
    assert weights.derived_metadata(gated, "Test non-commercial")["license"] == "Test non-commercial"
    for label in ("MIT", "Apache-2.0"):
        with pytest.raises(LicenseRelabelError, match=f"cannot be labelled '{label}'"):
            weights.derived_metadata(gated, label)
    free = load_model(_write(tmp_path / "mit.zip", archives["mit"]))
    assert weights.derived_metadata(free, "Apache-2.0") == {"license": "Apache-2.0", "derived_from": [MIT]}
    assert weights.derived_metadata(free)["license"] == "MIT"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> bytes:
    """A non-commercial archive of a very small MACE (fast to fine-tune), H C N O."""
    model = small_model(num_layers=1, num_channels=4, l_max=1, node_symmetry=1, correlation=1,
                        readout_irreps=("4x0e", "0e"), num_bessel=4, radial_mlp_hidden=(8,))
    model.metadata.update(name=NC, license="Test non-commercial", commercial_use=False)
    return save_archive(model, tmp_path_factory.mktemp("base") / "base.zip").read_bytes()


def fine_tune_args(out: Path) -> list[str]:
    data = shared_data("rmd17", "rmd17_aspirin_train_01.npz")
    sets = dict(max_train_frames=4, max_valid_frames=2, nodes_per_graph=24, edges_per_graph=420, warmup_steps=1)
    return ["train", "--train-file", str(data), "--epochs", "1", "--batch-size", "2", "--output-dir", str(out),
            "--quiet", *[arg for k, v in sets.items() for arg in ("--set", f"{k}={v}")]]


def test_fine_tuning_a_gated_model(hub, tiny_base, tmp_path, isolated):
    """`mace-ase train --init-from NAME`: refused, relabel refused, accepted; the export is gated in a fresh process."""
    from click.testing import CliRunner

    from mace_ase.cli.main import main
    from mace_ase.training import TrainSettings, train

    hub.add_file(NC_ENTRY.repo_id, NC_ENTRY.filename, tiny_base)
    out = tmp_path / "run"
    refused = CliRunner().invoke(main, [*fine_tune_args(out), "--init-from", NC])
    assert refused.exit_code == 1 and "Error: model 'tiny-organics' is licensed under the Test non-commercial" in refused.stderr
    assert "--accept-license" in refused.stderr and downloads(hub) == []
    with pytest.raises(LicenseNotAcceptedError):  # the Python API, a path instead of a name
        train(TrainSettings(train_file="unused.xyz", init_from=str(_write(tmp_path / "b.zip", tiny_base))))

    relabel = CliRunner().invoke(main, [*fine_tune_args(out), "--init-from", NC, "--accept-license", "--set", "license=MIT"])
    assert relabel.exit_code == 1 and "cannot be labelled 'MIT'" in relabel.stderr, relabel.output
    assert not (out / "checkpoint.npz").exists()  # refused before any training step

    tuned = CliRunner().invoke(main, [*fine_tune_args(out), "--init-from", NC, "--accept-license", "--set", "model_name=my-ft"])
    assert tuned.exit_code == 0, tuned.output
    archive = out / "model.zip"
    metadata = json.loads(zipfile.ZipFile(archive).read("mace_ase.json"))
    assert metadata["name"] == "my-ft" and metadata["license"] == "Test non-commercial"
    assert metadata["commercial_use"] is False and NC in metadata["derived_from"]
    assert metadata["license_summary"] == NC_ENTRY.license_summary

    script = (
        "import os, sys\n"
        "from mace_ase.weights import load_model\n"
        "from mace_ase.errors import LicenseNotAcceptedError\n"
        "try:\n"
        "    load_model(sys.argv[1])\n"
        "    print('LOADED WITHOUT ACCEPTANCE')\n"
        "except LicenseNotAcceptedError as error:\n"
        "    print('refused:', str(error).splitlines()[0])\n"
        f"os.environ['{weights.ENV_ACCEPT}'] = '{NC}'\n"
        "print('accepted:', load_model(sys.argv[1]).metadata['license'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != weights.ENV_ACCEPT}
    env.update({weights.ENV_CONFIG_DIR: str(tmp_path / "fresh-config"), "JAX_PLATFORMS": "cpu"})
    run = subprocess.run([sys.executable, "-c", script, str(archive)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        f"refused: model 'my-ft' (derived from '{NC}', whose licence it keeps) is licensed under the Test non-commercial licence, "
        "which does not allow commercial use; you must accept it before the model loads. Licence summary:",
        "accepted: Test non-commercial",
    ]


def test_two_processes_accept_different_licences_at_once(isolated):
    """The licence record is a read-modify-write: under the lock, no acceptance is lost."""
    start = isolated / "go"
    script = (
        "import os, sys, time\n"
        "from mace_ase.weights import accept_license\n"
        f"while not os.path.exists({str(start)!r}): time.sleep(0.005)\n"
        "for k in range(40): accept_license(f'{sys.argv[1]}-{k}')\n"
    )
    env = {**os.environ, weights.ENV_CONFIG_DIR: str(isolated / "config")}
    runs = [subprocess.Popen([sys.executable, "-c", script, who], env=env, stderr=subprocess.PIPE, text=True)
            for who in ("alpha", "beta")]
    time.sleep(0.5)  # both started and waiting
    start.touch()
    errors = [run.communicate(timeout=120)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    recorded = json.loads((isolated / "config" / "licenses.json").read_text())["accepted"]
    assert sorted(recorded) == sorted(f"{who}-{k}" for who in ("alpha", "beta") for k in range(40))
    assert [p.name for p in (isolated / "config").iterdir() if p.name.endswith(".tmp")] == []
