"""The torch-free reader of torch.save files: same tensors as torch, no code run, bad files refused by name."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import require, shared_file

from mace_ase.errors import ArchiveError
from mace_ase.formats.torch_pickle import Record, module_state_dict, read_torch_file

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_torch"


def test_spice_model_state_dict_is_read_bit_for_bit():
    """The 2022 SPICE pickle (torch 1.x era) against its state_dict exported with torch."""
    root = read_torch_file(shared_file("models", "MACE_SPICE.model"))
    assert isinstance(root, Record) and root.name == "ScaleShiftMACE"
    state = module_state_dict(root)
    with np.load(shared_file("models", "MACE_SPICE_state_dict.npz")) as reference:
        # r_max, atomic_numbers, num_interactions: attributes in this pickle, buffers in the export
        assert set(reference.files) - set(state) == {"r_max", "atomic_numbers", "num_interactions"}
        assert set(state) <= set(reference.files)
        for key, value in state.items():
            assert value.dtype == reference[key].dtype and value.shape == reference[key].shape, key
            np.testing.assert_array_equal(value, reference[key], err_msg=key)
    # Hyper-parameters that are not tensors come with the records.
    assert root.path("interactions.0").get("avg_num_neighbors") == pytest.approx(15.586853981018066)
    assert root.path("interactions.0.conv_tp_weights.layer0.act").state["cst"] == pytest.approx(1.6791767923989418)


def test_torch_load_and_this_reader_agree_on_a_torch_2_13_file():
    torch = require("torch")
    require("mace")
    path = GOLDEN / "density_zbl_agnesi.model"
    mine = module_state_dict(read_torch_file(path))
    theirs = torch.load(path, map_location="cpu", weights_only=False).state_dict()
    # e3nn regenerates its compiled tensor-product code (and its Wigner-3j constants) at load time;
    # in the file that code is a string, which this reader keeps as data and never runs.
    theirs = {k: v for k, v in theirs.items() if "._compiled_main" not in k}
    assert set(mine) == set(theirs)
    for key, value in theirs.items():
        np.testing.assert_array_equal(mine[key], value.numpy(), err_msg=key)
    # a state_dict file reads as a mapping of arrays
    state = read_torch_file(GOLDEN / "density_zbl_agnesi.pt")
    assert set(state) >= set(theirs)


class _Payload:
    """Unpickling this calls os.system: the classic torch.load exploit."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def _malicious_model(path: Path, marker: Path) -> Path:
    """A zip laid out like torch.save's whose data.pkl runs a shell command when torch loads it."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))
        archive.writestr("archive/byteorder", "little")
        archive.writestr("archive/version", "3\n")
    return path


def test_a_pickle_that_would_run_code_is_refused_by_name(tmp_path):
    marker = tmp_path / "pwned"
    path = _malicious_model(tmp_path / "evil.model", marker)
    with pytest.raises(ArchiveError, match=r"refusing to load the global '(posix|os)\.system'"):
        read_torch_file(path)
    assert not marker.exists()


def test_the_crafted_file_really_runs_code_under_torch_load(tmp_path):
    """The control: torch.load(weights_only=False), which mace-torch uses, executes it."""
    torch = require("torch")
    marker = tmp_path / "pwned"
    path = _malicious_model(tmp_path / "evil.model", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("module, name", [("builtins", "eval"), ("subprocess", "Popen"), ("torch", "load"),
                                          ("functools", "partial"), ("numpy", "load")])
def test_other_dangerous_globals_are_refused(tmp_path, module, name):
    data = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."  # GLOBAL, EMPTY_TUPLE, REDUCE, STOP
    path = tmp_path / "bad.model"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("m/data.pkl", data)
    with pytest.raises(ArchiveError, match=f"'{module}.{name}'"):
        read_torch_file(path)


def test_an_out_of_bounds_tensor_view_is_refused(tmp_path):
    """A strided view past its storage would read foreign memory: refused instead."""
    source = GOLDEN / "two_heads.model"
    with zipfile.ZipFile(source) as archive:
        names = archive.namelist()
        prefix = next(n for n in names if n.endswith("/data.pkl"))[: -len("data.pkl")]
        broken = tmp_path / "short.model"
        with zipfile.ZipFile(broken, "w") as target:
            for n in names:
                data = archive.read(n)
                if n.startswith(prefix + "data/") and len(data) > 64:
                    data = data[:8]  # truncate every large storage
                target.writestr(n, data)
    with pytest.raises(ArchiveError, match="past the end of its storage|partial element"):
        read_torch_file(broken)


def test_not_a_torch_file(tmp_path):
    (tmp_path / "plain.model").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="not a zip"):
        read_torch_file(tmp_path / "plain.model")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(ArchiveError, match="data.pkl"):
        read_torch_file(tmp_path / "other.zip")
