"""Data parallel training: two devices, and two processes, give the one-device numbers.

Both tests run in subprocesses (the device count and jax.distributed are process-wide) on a
tiny model in float64 (JAX's x64 is on inside train() only), on rMD17 aspirin written in
mlip's HDF5 layout and streamed: batches of 7 graphs, so two devices take 4 + 3 graphs.
The reference is the plain one-device step on the same global batches; the tolerance
(1e-10 relative) is float64 round-off in the order of the sums, while three steps move the
parameters by ~1e-2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import require, shared_data, subprocess_env

TINY = dict(num_layers=1, num_channels=4, l_max=1, node_symmetry=1, correlation=1, readout_irreps=["4x0e", "0e"],
            num_bessel=4, radial_mlp_hidden=[8])


def aspirin_hdf5(path, frames=40):
    """rMD17 aspirin in mlip's layout (SPICE2-curated: one group per structure, eV and Å)."""
    h5py = require("h5py")
    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    with h5py.File(path, "w") as f:
        for k in range(frames):
            g = f.create_group(f"structure_{k:05d}")
            g["elements"] = data["nuclear_charges"]
            g["positions"] = data["coords"][k]
            g["forces"] = data["forces"][k] * 0.0433641
            g.attrs["energy"] = data["energies"][k] * 0.0433641
    return path


def settings_dict(data, output_dir, **changes):
    d = dict(train_file=str(data), stream=True, valid_fraction=0.25, max_train_frames=21, batch_size=7, nodes_per_graph=24,
             edges_per_graph=420, epochs=1, warmup_steps=1, seed=3, dtype="float64", output_dir=str(output_dir), **TINY)
    d.update(changes)
    return d


def max_relative_difference(a_leaves, b_leaves) -> float:
    worst = 0.0
    for a, b in zip(a_leaves, b_leaves):
        a, b = np.asarray(a, float), np.asarray(b, float)
        scale = max(float(np.max(np.abs(a))), 1e-300) if a.size else 1.0
        worst = max(worst, float(np.max(np.abs(a - b))) / scale if a.size else 0.0)
    return worst


TWO_DEVICES = """
import json, sys
import jax, numpy as np
from mace_ase.training import TrainSettings, train
from mace_ase.training.batching import BatchShape, plan_epoch
from mace_ase.training.hdf5 import Hdf5Options
from mace_ase.training.stream import open_index
from mace_ase.training.trainer import prepare
base = json.loads(sys.argv[1])
runs = {"one": dict(devices=1), "two": dict(), "one_accumulated": dict(devices=1, micro_batches_per_device=2)}
out = {}
for name, extra in runs.items():
    s = TrainSettings.from_dict({**base, **extra, "output_dir": base["output_dir"] + "/" + name})
    summary = train(s, log=lambda *a: None)
    leaves = jax.tree.leaves((summary["params"], summary["ema_params"]))
    out[name] = {"leaves": [np.asarray(x).tolist() for x in leaves], "dtype": str(leaves[0].dtype),
                 "devices": summary["devices"], "micro_batches": summary["micro_batches"], "loss": summary["metrics"].get("train_loss")}
index = open_index(base["train_file"], Hdf5Options(), 5.0, log=lambda *a: None)
sizes = index.summaries.num_atoms[:21], index.summaries.num_edges[:21]
plan = plan_epoch(*sizes, BatchShape(7, 24, 420).micro(2), 2, 7, np.random.default_rng([base["seed"], 0]))
out["graphs_per_micro_batch"] = [len(plan.micro(j)) for j in range(2 * plan.num_steps)]
out["devices_seen"] = len(jax.devices())
with jax.enable_x64(True):
    start = prepare(TrainSettings.from_dict(base)).init_params
out["start"] = [np.asarray(x).tolist() for x in jax.tree.leaves(start)]
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def two_devices(tmp_path_factory):
    """One subprocess with two CPU devices: the plain one-device run, two devices, one device with two micro-batches."""
    tmp = tmp_path_factory.mktemp("parallel")
    data = aspirin_hdf5(tmp / "aspirin.h5")
    base = settings_dict(data, tmp / "runs")
    env = subprocess_env(tmp / "jax-cache", XLA_FLAGS="--xla_force_host_platform_device_count=2")
    done = subprocess.run([sys.executable, "-c", TWO_DEVICES, json.dumps(base)], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, json.loads(done.stdout.split("RESULT", 1)[1])


def test_two_devices_give_the_one_device_parameters(two_devices):
    _, out = two_devices
    assert out["devices_seen"] == 2
    assert (out["one"]["devices"], out["one"]["micro_batches"]) == (1, 1)  # the plain one-device step
    assert (out["two"]["devices"], out["two"]["micro_batches"]) == (2, 2)
    assert (out["one_accumulated"]["devices"], out["one_accumulated"]["micro_batches"]) == (1, 2)
    assert out["graphs_per_micro_batch"] == [4, 3] * 3  # 7 graphs per step: the devices get 4 and 3
    assert out["one"]["dtype"] == "float64"
    one = out["one"]["leaves"]
    for name in ("two", "one_accumulated"):
        assert max_relative_difference(one, out[name]["leaves"]) < 1e-10, name
        assert out[name]["loss"] == pytest.approx(out["one"]["loss"], rel=1e-12)
    half = len(one) // 2  # (params, EMA): three steps moved the parameters far beyond the tolerance
    assert max_relative_difference(one[:half], out["start"]) > 1e-3


WORKER = '''
"""One process of a multi-process `mace-ase train` (the real CLI); KILL_AFTER_STEP kills it (SIGKILL) after that step."""
import json, os, signal, sys, time
import mace_ase.training as training

real_train = training.train

def train(settings, resume=False, progress=None, log=print, **options):
    kill_after = int(os.environ.get("KILL_AFTER_STEP", "-1"))
    def hook(epoch, k, n, loss):
        if k == kill_after:
            time.sleep(1.0)  # the other process saves this step's checkpoint and waits in the next step
            os.kill(os.getpid(), signal.SIGKILL)
    summary = real_train(settings, resume=resume, progress=hook, log=log, **options)
    with open(os.environ["REPORT"], "w") as f:
        json.dump({"frames_read": summary["frames_read"], "devices": summary["devices"]}, f)
    return summary

training.train = train
from mace_ase.cli.main import main
main(sys.argv[1:])
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path, cache, config, kill_after=None, resume=False):
    port = _free_port()
    processes = []
    for rank in range(2):
        env = subprocess_env(cache, REPORT=str(tmp_path / f"report{rank}.json"))
        if kill_after is not None and rank == 1:
            env["KILL_AFTER_STEP"] = str(kill_after)
        args = [sys.executable, str(tmp_path / "worker.py"), "train", "--config", str(config), "--quiet",
                "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(rank)]
        processes.append(subprocess.Popen(args + (["--resume"] if resume else []), env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=300)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in processes], outputs


def _checkpoint_leaves(path):
    with np.load(path) as npz:
        return [npz[name] for name in sorted(npz.files) if name.startswith("leaf_")]


def test_two_processes_match_one_process_and_resume_after_a_lost_process(tmp_path, two_devices):
    """jax.distributed on localhost (CPU collectives): kill process 1 after step 1 of 3, process 0 stops
    with a clear error; `--resume` in both finishes with the one-process parameters, optimiser state and EMA."""
    shared, _ = two_devices
    cache = shared / "jax-cache"
    config = tmp_path / "run.json"
    config.write_text(json.dumps(settings_dict(shared / "aspirin.h5", tmp_path / "two-processes", checkpoint_every_steps=1)))
    (tmp_path / "worker.py").write_text(textwrap.dedent(WORKER))

    codes, outputs = _launch(tmp_path, cache, config, kill_after=0)
    assert codes[1] == -9, outputs[1][-2000:]
    assert codes[0] == 1, outputs[0][-3000:]
    error = [line for line in outputs[0].splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "Traceback" not in outputs[0], outputs[0][-3000:]
    assert "lost contact" in error[0] and "--resume" in error[0] and "checkpoint.npz" in error[0]
    meta = json.loads(bytes(np.load(tmp_path / "two-processes" / "checkpoint.npz")["meta"]).decode())
    assert (meta["epoch"], meta["step"], meta["epoch_complete"]) == (0, 1, False)

    codes, outputs = _launch(tmp_path, cache, config, resume=True)
    assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-2000:]
    reports = [json.loads((tmp_path / f"report{rank}.json").read_text()) for rank in range(2)]
    assert [r["devices"] for r in reports] == [2, 2]
    # The two remaining steps hold 14 frames; each process read only its own micro-batches (4 + 4 and 3 + 3).
    assert [r["frames_read"] for r in reports] == [8, 6]

    # The reference: the plain one-device run of the same settings (the fixture's), its final checkpoint.
    ours = _checkpoint_leaves(tmp_path / "two-processes" / "checkpoint.npz")
    theirs = _checkpoint_leaves(shared / "runs" / "one" / "checkpoint.npz")
    assert len(ours) == len(theirs) and ours[0].dtype == np.float64
    assert max_relative_difference(theirs, ours) < 1e-10
