"""Training beyond one device, measured on this machine: throughput on 1 and 2 devices against mlip, and
the streaming reader's host memory against the data set's size.

    python benchmarks/training_scaling.py                  # both parts (~10 min on 2 cores)
    python benchmarks/training_scaling.py --only memory

Throughput: the mace-organics card's architecture and batch (64 graphs of rMD17 aspirin, float32,
the card's loss weights, optimiser and EMA), each row in its own process, side by side in one run:

* mace-ase, 1 device and 2 devices: the real ``mace_ase.training.train()`` on the card config
  (``weights/mace-organics-card.toml``) with the data streamed from an HDF5 file in mlip's layout.
  Both processes see two CPU devices (``--xla_force_host_platform_device_count=2``); the 1-device
  row trains on the first. The step time is the wall time between consecutive steps (the
  progress callback, after the loss is on the host), median over the steps after the compiling
  first; ``data_wait_s`` is the time the step loop waited for the loader's batches.
* mlip: ``training_step.worker_training("mlip")``, the same loss over mlip's predictor with mlip's
  own optimiser and EMA, on the same 64 frames in one batch.

Two CPU devices share the same 2 cores here, so no speed-up is expected: the 2-device row
measures what the sharded step (shard_map, psum of the gradients) costs on the same cores.

Memory: SPICE-layout files of growing size (1,000-atom frames), each indexed in one streaming
pass and trained for 2 steps in a process that had already compiled the model on a small file;
the row is what the big file adds to the process's peak RSS.

Results: benchmarks/results/training_scaling.json and a line in benchmarks/results/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
KCAL_PER_MOL = 0.0433641  # eV
STEPS = 6  # optimiser steps per mace-ase run (the first compiles)
BATCH = 64

MACE_ASE = """
import json, sys, time
import numpy as np
from mace_ase.training import TrainSettings, train
args = json.loads(sys.argv[1])
s = TrainSettings.from_file(args["card"])
for name, value in args["overrides"].items():
    setattr(s, name, value)
stamps = []
summary = train(s, progress=lambda epoch, k, n, loss: stamps.append(time.perf_counter()), log=lambda *a: None)
steps = np.diff(stamps)
row = summary["metrics"]
print(json.dumps({"devices": summary["devices"], "micro_batches": summary["micro_batches"], "steps": len(stamps),
                  "median_step_s": float(np.median(steps)), "step_s": [float(x) for x in steps],
                  "data_wait_s": row["data_wait_s"], "epoch_s": row["epoch_s"], "loss": row["train_loss"]}))
"""

MLIP = """
import json, sys
sys.path.insert(0, sys.argv[2])
import run, training_step
archive = run._card_archive(__import__("pathlib").Path(sys.argv[1]))
print(json.dumps(training_step.worker_training("mlip", str(archive))))
"""

MEMORY = """
import json, sys, threading, time
import psutil
from mace_ase.training import TrainSettings, train
small, big, out, base = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
first = train(TrainSettings.from_dict({**base, "train_file": small, "valid_fraction": 0.3, "output_dir": out + "/small"}), log=lambda *a: None)
me = psutil.Process()
before = me.memory_info().rss
peak, stop = [before], threading.Event()
def sample():
    while not stop.is_set():
        peak[0] = max(peak[0], me.memory_info().rss)
        time.sleep(0.002)
thread = threading.Thread(target=sample, daemon=True)
thread.start()
start = time.perf_counter()
summary = train(TrainSettings.from_dict({**base, "train_file": big, "init_from": first["archive"], "output_dir": out + "/big"}),
                log=lambda *a: None)
stop.set()
thread.join()
print(json.dumps({"rss_before_mb": before / 2**20, "added_peak_mb": (peak[0] - before) / 2**20, "wall_s": time.perf_counter() - start,
                  "frames_read": summary["frames_read"]}))
"""

TINY = dict(num_layers=1, num_channels=4, l_max=1, node_symmetry=1, correlation=1, readout_irreps=["4x0e", "0e"],
            num_bessel=4, radial_mlp_hidden=[8])
SPICE = dict(energy_key="dft_total_energy", forces_key="dft_total_gradient",
             hdf5_options={"positions_key": "conformations", "length_unit": "bohr", "forces_are_gradients": True})


def environment(**extra) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3",
           "OMP_NUM_THREADS": "2", "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    env.update(extra)
    return env


def run_json(code: str, *args, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        print(done.stderr[-3000:], file=sys.stderr)
        return {"status": "error"}
    return {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}


def aspirin_files(folder: Path) -> tuple[Path, Path]:
    """rMD17 aspirin in mlip's HDF5 layout (eV, Å): STEPS batches of training frames and one of validation."""
    import h5py
    import numpy as np

    data = np.load(REPO.parent / "shared" / "data" / "rmd17" / "rmd17_aspirin_train_01.npz")
    paths = []
    for part, frames in (("train", range(0, STEPS * BATCH)), ("valid", range(STEPS * BATCH, (STEPS + 1) * BATCH))):
        path = folder / f"aspirin_{part}.h5"
        with h5py.File(path, "w") as f:
            for k in frames:
                g = f.create_group(f"structure_{k:05d}")
                g["elements"] = data["nuclear_charges"]
                g["positions"] = data["coords"][k]
                g["forces"] = data["forces"][k] * KCAL_PER_MOL
                g.attrs["energy"] = data["energies"][k] * KCAL_PER_MOL
        paths.append(path)
    return paths[0], paths[1]


def throughput(folder: Path) -> list[dict]:
    train_file, valid_file = aspirin_files(folder)
    rows = []
    for name, devices in (("mace-ase, 1 device", 1), ("mace-ase, 2 devices", None)):
        overrides = dict(train_file=str(train_file), valid_file=str(valid_file), epochs=1, edges_per_graph=310,  # aspirin at 5 Å: 303 on average; every batch of 64 fits (mlip row: 304)
                         output_dir=str(folder / name.replace(" ", "").replace(",", "-")), devices=devices)
        out = run_json(MACE_ASE, json.dumps({"card": str(REPO / "weights" / "mace-organics-card.toml"), "overrides": overrides}),
                       env=environment())
        rows.append({"row": name, **out})
        print(rows[-1], flush=True)
    out = run_json(MLIP, folder, HERE, env=environment(XLA_FLAGS=""))
    rows.append({"row": "mlip, 1 device", "devices": 1, **out})
    print(rows[-1], flush=True)
    for row in rows:
        if row.get("status") == "ok":
            row["frames_per_s"] = BATCH / row["median_step_s"]
            row["frames_per_s_per_device"] = row["frames_per_s"] / row["devices"]
    return rows


def spice_file(path: Path, frames: int, atoms: int = 1000, seed: int = 0) -> Path:
    import h5py
    import numpy as np

    rng = np.random.default_rng(seed)
    side = (atoms / 0.02) ** (1 / 3)
    per_group = 100
    with h5py.File(path, "w") as f:
        for g in range(max(1, frames // per_group)):
            group = f.create_group(f"mol{g:05d}")
            group["atomic_numbers"] = rng.choice([1, 6], atoms)
            n = min(per_group, frames)
            positions = group.create_dataset("conformations", (n, atoms, 3), float)
            gradients = group.create_dataset("dft_total_gradient", (n, atoms, 3), float)
            for k in range(n):
                positions[k] = rng.uniform(0, side, (atoms, 3)) / 0.529177210903
                gradients[k] = rng.normal(0, 0.01, (atoms, 3))
            group["dft_total_energy"] = rng.normal(-100, 0.1, n)
    return path


def memory(folder: Path, sizes=(500, 2000, 8000)) -> list[dict]:
    small = spice_file(folder / "small.h5", 10, seed=1)
    base = dict(stream=True, **SPICE, cutoff=2.0, valid_fraction=0.01, max_train_frames=4, max_valid_frames=2, batch_size=2,
                nodes_per_graph=1000, edges_per_graph=900, epochs=1, warmup_steps=1, **TINY)
    rows = []
    for frames in sizes:
        big = spice_file(folder / f"big{frames}.h5", frames)
        out = run_json(MEMORY, small, big, folder / f"run{frames}", json.dumps(base), env=environment(XLA_FLAGS=""))
        rows.append({"frames": frames, "file_mb": big.stat().st_size / 2**20, **out})
        print(rows[-1], flush=True)
        big.unlink()
    return rows


def summarize(result: dict) -> dict:
    """Ratios of the throughput rows: mace-ase per device against mlip, the sharded step's cost, the loader's share."""
    rows = {r["row"]: r for r in result.get("throughput", []) if r.get("status") == "ok"}
    one, two, mlip = rows.get("mace-ase, 1 device"), rows.get("mace-ase, 2 devices"), rows.get("mlip, 1 device")
    summary = {}
    if one and mlip:
        summary["mace_ase_over_mlip_per_device"] = one["frames_per_s"] / mlip["frames_per_s"]
    if one and two:
        summary["sharded_step_cost"] = two["median_step_s"] / one["median_step_s"] - 1
        # data_wait_s also holds the wait for the first batch, before any step: an upper bound of the loader's share.
        summary["data_wait_share_of_steps_at_most"] = {name: r["data_wait_s"] / (r["steps"] * r["median_step_s"])
                                                       for name, r in (("1 device", one), ("2 devices", two))}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="throughput,memory")
    parser.add_argument("--output", default=str(RESULTS / "training_scaling.json"))
    args = parser.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        if "throughput" in args.only:
            result["throughput"] = throughput(Path(tmp))
        if "memory" in args.only:
            result["memory"] = memory(Path(tmp))
    result["load_after"] = os.getloadavg()
    summary = result["summary"] = summarize(result)
    print(json.dumps(summary, indent=1))
    Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
