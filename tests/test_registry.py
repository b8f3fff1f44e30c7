"""The foundation-model registry and direct HTTPS downloads (models not on Hugging Face).

Registry entries are checked against mace-torch's own list (its foundations_models.py,
read as text: no torch import). Downloads run the real code (mace_ase.download through
mace_ase.weights.fetch_model) against a local HTTP server (tests/hf_server.FileServer)
with test entries whose URLs point at it; the caches and the config folder live in tmp dirs.
"""

from __future__ import annotations

import ast
import hashlib
import io
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import require
from hf_server import FileServer, closed_port_url
from mace_ase import weights
from mace_ase.archive import save_archive
from mace_ase.errors import (
    ArchiveError,
    ChecksumError,
    DownloadError,
    LicenseNotAcceptedError,
    LicenseRelabelError,
    ModelNotFoundError,
)
from mace_ase.weights import ModelEntry, load_model

FOUNDATION = {  # registry name -> (mace-torch's dict, its key)
    "mace-off23-small": ("mace_off_urls", "small"),
    "mace-off23-medium": ("mace_off_urls", "medium"),
    "mace-off23-large": ("mace_off_urls", "large"),
    "mace-mp-0-small": ("mace_mp_urls", "small"),
    "mace-mp-0-medium": ("mace_mp_urls", "medium"),
    "mace-mp-0b3-medium": ("mace_mp_urls", "medium-0b3"),
    "mace-mpa-0-medium": ("mace_mp_urls", "medium-mpa-0"),
    "mace-omat-0-small": ("mace_mp_urls", "small-omat-0"),
    "mace-omat-0-medium": ("mace_mp_urls", "medium-omat-0"),
}


# ------------------------------------------------------------------ fixtures


def _raw_archive(model, folder: Path) -> bytes:
    """An archive as published by others: no mace-ase metadata member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(save_archive(model, folder / "m.zip")) as source, zipfile.ZipFile(buffer, "w") as target:
        for item in source.namelist():
            if item != "mace_ase.json":
                target.writestr(item, source.read(item))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def files(model, tmp_path_factory) -> dict[str, bytes]:
    return {
        "archive": _raw_archive(model, tmp_path_factory.mktemp("archive")),  # conftest's small random model
        "torch": np.random.default_rng(1).bytes(300_000),  # stands in for a .model file (bytes only)
    }


@pytest.fixture
def server(files):
    srv = FileServer()
    srv.files["/models/tiny_asl.zip"] = files["archive"]
    srv.files["/models/tiny_mit.zip"] = files["archive"]
    srv.files["/releases/tiny-torch.model"] = files["torch"]
    yield srv
    srv.stop()


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    for name in ("HF_HUB_OFFLINE", weights.ENV_OFFLINE, weights.ENV_ACCEPT, "XDG_CACHE_HOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(weights.ENV_CACHE_DIR, str(tmp_path / "cache"))
    monkeypatch.setenv(weights.ENV_CONFIG_DIR, str(tmp_path / "config"))
    monkeypatch.setattr(weights, "_announced", set())
    return tmp_path


def register(monkeypatch, server, name, path, *, license="MIT", sha256=None):
    """A test entry downloaded from the local server (ASL entries use the real ASL summary)."""
    filename = path.rsplit("/", 1)[1]
    restricted = license == weights.ASL
    entry = ModelEntry(
        name, None, filename, None, license,
        weights.REGISTRY["mace-off23-small"].license_summary if restricted else "MIT TERMS", not restricted,
        "test model", url=server.url + path, sha256=sha256,
    )
    monkeypatch.setitem(weights.REGISTRY, name, entry)
    return entry


def gets(server) -> list[tuple[str, str | None]]:
    return [(path, rng) for method, path, rng in server.requests if method == "GET"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------ the registry itself


def test_foundation_models_match_mace_torch_urls_and_licences():
    """URLs and licences against mace-torch 0.3.16's foundations_models.py (parsed, not imported)."""
    mace = require("mace")
    source = Path(mace.__file__).parent / "calculators" / "foundations_models.py"
    tree = ast.parse(source.read_text())
    tables, asl_keys, off_doc = {}, set(), ""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in ("mace_mp_urls", "mace_off_urls"):
                tables[name] = ast.literal_eval(node.value)
            if name == "ASL_checkpoint_urls":  # {mace_mp_urls["small-omat-0"], ...}
                asl_keys = {element.slice.value for element in node.value.elts}
        if isinstance(node, ast.FunctionDef) and node.name == "mace_off":
            off_doc = ast.get_docstring(node)
    assert "released under the ASL license" in off_doc
    for name, (table, key) in FOUNDATION.items():
        entry = weights.REGISTRY[name]
        assert entry.url == tables[table][key], name
        assert entry.filename == entry.url.rsplit("/", 1)[1] and entry.repo_id is None
        asl = table == "mace_off_urls" or key in asl_keys
        assert (entry.license == weights.ASL) == asl and entry.commercial_use == (not asl), name
        assert entry.sha256 is None  # none published; nothing here could download the real files
    asl_names = sorted(n for n, e in weights.REGISTRY.items() if e.license == weights.ASL)
    assert asl_names == ["mace-off23-large", "mace-off23-medium", "mace-off23-small",
                         "mace-omat-0-medium", "mace-omat-0-small"]


# ------------------------------------------------------------------ downloads


def test_download_verify_cache_then_offline(server, files, monkeypatch, isolated, capsys):
    register(monkeypatch, server, "tiny-mit", "/models/tiny_mit.zip")
    entry = register(monkeypatch, server, "tiny-asl", "/models/tiny_asl.zip", license=weights.ASL,
                     sha256=sha(files["archive"]))
    with pytest.raises(LicenseNotAcceptedError, match=r"(?s)tiny-asl.*ASL.*academic non-commercial use only"):
        load_model("tiny-asl")
    assert gets(server) == []  # refused before any download

    model = load_model("tiny-asl", accept_license=True)
    path = isolated / "cache" / "models" / "tiny_asl.zip"
    assert path.read_bytes() == files["archive"]
    assert model.metadata["license"] == weights.ASL and model.metadata["commercial_use"] is False
    assert model.metadata["source"] == entry.url
    assert not list(path.parent.glob("*.part"))
    assert "academic non-commercial use only" in capsys.readouterr().err  # the terms, once loaded

    mit = load_model("tiny-mit")  # MIT: no gate
    assert mit.metadata["license"] == "MIT" and mit.config == model.config
    assert "no published sha256" in capsys.readouterr().err  # and the digest it got
    assert len(gets(server)) == 2
    load_model("tiny-asl", accept_license=True)  # from the cache
    assert len(gets(server)) == 2
    [row] = [r for r in weights.models_status() if r["name"] == "tiny-asl"]
    assert row["path"] == str(path) and row["license_accepted"] is False and row["url"] == entry.url

    server.stop()
    for switch in ("HF_HUB_OFFLINE", weights.ENV_OFFLINE):
        monkeypatch.setenv(switch, "1")
        assert load_model("tiny-mit").config == model.config
        monkeypatch.delenv(switch)


def test_model_file_download_bytes_and_checksum(server, files, monkeypatch, isolated):
    """A .model file (read by mace-ase's mace-torch reader) downloads like any other."""
    register(monkeypatch, server, "tiny-torch", "/releases/tiny-torch.model", sha256=sha(files["torch"]))
    path = weights.fetch_model("tiny-torch")
    assert path == isolated / "cache" / "models" / "tiny-torch.model"
    assert path.read_bytes() == files["torch"]
    assert path.with_name("tiny-torch.model.sha256").read_text().strip() == sha(files["torch"])


def test_interrupted_transfer_resumes(server, files, monkeypatch, isolated):
    register(monkeypatch, server, "tiny-torch", "/releases/tiny-torch.model", sha256=sha(files["torch"]))
    server.truncate["/releases/tiny-torch.model"] = 100_000
    with pytest.raises(DownloadError, match=r"stopped after 100,000 of 300,000 bytes.*continues from there"):
        weights.fetch_model("tiny-torch")
    folder = isolated / "cache" / "models"
    assert not (folder / "tiny-torch.model").exists()
    assert (folder / "tiny-torch.model.part").stat().st_size == 100_000
    assert weights.fetch_model("tiny-torch").read_bytes() == files["torch"]
    assert gets(server) == [("/releases/tiny-torch.model", None), ("/releases/tiny-torch.model", "bytes=100000-")]
    assert not (folder / "tiny-torch.model.part").exists()


def test_checksum_mismatch_keeps_nothing(server, files, monkeypatch, isolated):
    register(monkeypatch, server, "tiny-torch", "/releases/tiny-torch.model", sha256="ab" * 32)
    with pytest.raises(ChecksumError, match=f"model 'tiny-torch'.*sha256 {sha(files['torch'])}, not the published abab"):
        weights.fetch_model("tiny-torch")
    assert sorted(p.name for p in (isolated / "cache" / "models").iterdir()) == ["tiny-torch.model.lock"]


def test_damaged_cached_copy(server, files, monkeypatch, isolated):
    register(monkeypatch, server, "tiny-asl", "/models/tiny_asl.zip", license=weights.ASL, sha256=sha(files["archive"]))
    path = weights.fetch_model("tiny-asl")
    path.write_bytes(files["archive"][:5000])  # damaged after a good download
    with pytest.raises(ChecksumError, match="the cached file .* not the published .*--force-download"):
        load_model("tiny-asl", accept_license=True)
    assert weights.fetch_model("tiny-asl", force_download=True).read_bytes() == files["archive"]
    assert load_model("tiny-asl", accept_license=True).metadata["license"] == weights.ASL

    register(monkeypatch, server, "tiny-mit", "/models/tiny_mit.zip")  # no checksum: the reader finds it
    weights.fetch_model("tiny-mit").write_bytes(files["archive"][:5000])
    with pytest.raises(ArchiveError, match="truncated or corrupt.*mace-ase cache.*force_download=True"):
        load_model("tiny-mit")


@pytest.mark.parametrize("failure", ["missing", "html", "unreachable"])
def test_download_failures_say_what_to_do(server, monkeypatch, isolated, failure):
    entry = register(monkeypatch, server, "tiny-mit", "/models/tiny_mit.zip")
    if failure == "missing":
        server.files.pop("/models/tiny_mit.zip")
        error, words = ModelNotFoundError, ["tiny_mit.zip does not exist (HTTP 404)", "pass the downloaded file's path"]
    elif failure == "html":
        server.html.add("/models/tiny_mit.zip")
        error, words = DownloadError, ["web page (text/html)", f"download {entry.url}"]
    else:
        url = closed_port_url() + "/models/tiny_mit.zip"
        monkeypatch.setitem(weights.REGISTRY, "tiny-mit", ModelEntry(**{**entry.__dict__, "url": url}))
        error, words = DownloadError, ["is unreachable", "Connection refused", f"download {url}",
                                       str(isolated / "cache" / "models" / "tiny_mit.zip"), "MACE_ASE_OFFLINE=1"]
    start = time.perf_counter()
    with pytest.raises(error) as caught:
        load_model("tiny-mit")
    assert time.perf_counter() - start < 10
    assert all(word in str(caught.value) for word in words), str(caught.value)
    assert not (isolated / "cache" / "models" / "tiny_mit.zip").exists()


def test_offline_with_empty_cache(server, monkeypatch, isolated):
    register(monkeypatch, server, "tiny-mit", "/models/tiny_mit.zip")
    monkeypatch.setenv(weights.ENV_OFFLINE, "1")
    with pytest.raises(DownloadError, match="not in the mace-ase cache .* downloads are disabled"):
        load_model("tiny-mit")
    monkeypatch.delenv(weights.ENV_OFFLINE)
    with pytest.raises(DownloadError, match="downloads are disabled"):
        weights.fetch_model("tiny-mit", local_files_only=True)
    assert server.requests == []
    with pytest.raises(DownloadError, match="only https://"):
        from mace_ase.download import download

        download("http://example.org/model.zip", isolated / "x.zip")


def test_two_threads_download_once(server, files, monkeypatch):
    """The file lock: a second fetch waits for the first download instead of starting its own."""
    register(monkeypatch, server, "tiny-torch", "/releases/tiny-torch.model", sha256=sha(files["torch"]))
    server.delay_s = 0.002  # 74 blocks: ~0.15 s, so that the two fetches overlap
    paths = []
    threads = [threading.Thread(target=lambda: paths.append(weights.fetch_model("tiny-torch"))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(paths) == 2 and paths[0] == paths[1] and paths[0].read_bytes() == files["torch"]
    assert len(gets(server)) == 1


# ------------------------------------------------------------------ licences of what is made from them


def test_saved_or_converted_copy_keeps_the_source_licence(server, files, monkeypatch, isolated, tmp_path):
    register(monkeypatch, server, "tiny-asl", "/models/tiny_asl.zip", license=weights.ASL, sha256=sha(files["archive"]))
    model = load_model("tiny-asl", accept_license=True)
    copy = save_archive(model, tmp_path / "converted.zip")
    with pytest.raises(LicenseNotAcceptedError, match="ASL"):
        load_model(copy)  # gated again, under another file name
    monkeypatch.setenv(weights.ENV_ACCEPT, "tiny-asl")
    assert load_model(copy).metadata["license"] == weights.ASL

    derived = weights.derived_metadata(model)
    assert derived["license"] == weights.ASL and derived["commercial_use"] is False
    assert "tiny-asl" in derived["derived_from"] and "academic non-commercial" in derived["license_summary"]
    with pytest.raises(LicenseRelabelError, match="ASL licence, which does not allow commercial use.*cannot be labelled 'MIT'"):
        weights.derived_metadata(model, "MIT")
