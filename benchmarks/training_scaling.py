"""Training beyond one device, measured on this machine: throughput on 1 and 2 devices against mlip, and
the streaming reader's host memory against the data set's size.

    python benchmarks/training_scaling.py                  # both parts (~40 min on 2 cores)
    python benchmarks/training_scaling.py --only memory

Throughput: the mace-organics card's architecture and batch (64 graphs of rMD17 aspirin, float32,
the card's loss weights, optimiser and EMA), each row in its own process, side by side in one run,
the whole set repeated ``--rounds`` times (rows interleaved, medians over rounds):

* mace-ase: the real ``mace_ase.training.train()`` on the card config
  (``weights/mace-organics-card.toml``) with the data streamed from an HDF5 file in mlip's layout.
  The step time is the wall time between consecutive steps (the progress callback, after the
  loss is on the host), median over the steps after the compiling first; ``data_wait_s`` is the
  time the step loop waited for the loader's batches. Rows: 1 device as a Python script starts
  (glibc's default heap); 1 device as ``mace-ase train`` starts (``GLIBC_TUNABLES`` =
  ``mace_ase.heap.TRAINING_TUNABLES``); 2 CPU devices (``--xla_force_host_platform_device_count=2``)
  with the same heap.
* mlip: ``training_step.worker_training("mlip")``, the same loss over mlip's predictor with mlip's
  own optimiser and EMA, on the same 64 frames in one batch; with glibc's default heap (as mlip
  runs) and with the same tunables, for the like-for-like ratio.

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
sys.path.insert(0, str(REPO))
from mace_ase.heap import with_training_tunables  # noqa: E402  (light: no JAX)

KCAL_PER_MOL = 0.0433641  # eV
STEPS = 6  # optimiser steps per mace-ase run (the first compiles)
TWO_DEVICES = "--xla_force_host_platform_device_count=2"
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


def environment(tunables: bool = False, **extra) -> dict:
    """A worker's environment: CPU, 2 threads; glibc's default heap, or the one `mace-ase train` starts with."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3", "OMP_NUM_THREADS": "2", "XLA_FLAGS": ""})
    env.update(extra)
    return with_training_tunables(env) if tunables else env


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


# (row, implementation, devices, glibc tunables, XLA_FLAGS)
ROWS = (("mace-ase, 1 device", "mace-ase", 1, False, ""),
        ("mace-ase, 1 device, mace-ase train's heap", "mace-ase", 1, True, ""),
        ("mace-ase, 2 devices, mace-ase train's heap", "mace-ase", 2, True, TWO_DEVICES),
        ("mlip, 1 device", "mlip", 1, False, ""),
        ("mlip, 1 device, mace-ase train's heap", "mlip", 1, True, ""))


def throughput(folder: Path, rounds: int) -> list[dict]:
    train_file, valid_file = aspirin_files(folder)
    rows = []
    for round_ in range(rounds):
        for name, impl, devices, tunables, xla_flags in ROWS:
            env = environment(tunables, XLA_FLAGS=xla_flags)
            if impl == "mlip":
                out = run_json(MLIP, folder, HERE, env=env)
            else:
                # The card's capacities (32 nodes, 288 edges per graph) are sized for SPICE; sized for aspirin (21 atoms,
                # 303 edges on average at 5 Å) every batch of 64 fits, with as many nodes as mlip's row and 2 % more edges.
                overrides = dict(train_file=str(train_file), valid_file=str(valid_file), epochs=1, nodes_per_graph=21,
                                 edges_per_graph=310,
                                 output_dir=str(folder / f"run{len(rows)}"), devices=devices)
                out = run_json(MACE_ASE, json.dumps({"card": str(REPO / "weights" / "mace-organics-card.toml"), "overrides": overrides}),
                               env=env)
            rows.append({"row": name, "round": round_, "glibc_tunables": env.get("GLIBC_TUNABLES"), "xla_flags": xla_flags,
                         "devices": devices, **out, "load_after": os.getloadavg()[0]})
            if out.get("status") == "ok":
                rows[-1]["frames_per_s"] = BATCH / out["median_step_s"]
            print(rows[-1], flush=True)
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
    """Medians over rounds per row; ratios: mace-ase against mlip per device, the sharded step's cost, the loader's share."""
    by_row = {}
    for r in result.get("throughput", []):
        if r.get("status") == "ok":
            by_row.setdefault(r["row"], []).append(r)
    step = {name: statistics.median(r["median_step_s"] for r in rows) for name, rows in by_row.items()}
    summary = {"median_step_s": step, "rounds": {name: len(rows) for name, rows in by_row.items()}}

    def ratio(ours, theirs):  # throughput per device: one device each
        if ours in step and theirs in step:
            return step[theirs] / step[ours]

    heap = ", mace-ase train's heap"
    summary["mace_ase_over_mlip_per_device"] = {
        "mace-ase train against mlip as each starts": ratio("mace-ase, 1 device" + heap, "mlip, 1 device"),
        "both with glibc's default heap": ratio("mace-ase, 1 device", "mlip, 1 device"),
        "both with mace-ase train's heap": ratio("mace-ase, 1 device" + heap, "mlip, 1 device" + heap),
    }
    summary["heap_speed_up"] = {"mace-ase": ratio("mace-ase, 1 device" + heap, "mace-ase, 1 device"),
                                "mlip": ratio("mlip, 1 device" + heap, "mlip, 1 device")}
    one, two = "mace-ase, 1 device" + heap, "mace-ase, 2 devices" + heap
    if one in step and two in step:
        summary["sharded_step_cost"] = step[two] / step[one] - 1
        # data_wait_s also holds the wait for the first batch, before any step: an upper bound of the loader's share.
        summary["data_wait_share_of_steps_at_most"] = {
            name: max(r["data_wait_s"] / (r["steps"] * r["median_step_s"]) for r in by_row[name]) for name in (one, two)}
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="throughput,memory")
    parser.add_argument("--rounds", type=int, default=2, help="repetitions of the throughput rows (interleaved)")
    parser.add_argument("--output", default=str(RESULTS / "training_scaling.json"))
    args = parser.parse_args(argv)
    result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
              "cpus": os.cpu_count(), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        if "throughput" in args.only:
            result["throughput"] = throughput(Path(tmp), args.rounds)
        if "memory" in args.only:
            result["memory"] = memory(Path(tmp))
    result["load_after"] = os.getloadavg()
    previous = json.loads(Path(args.output).read_text()) if Path(args.output).exists() else {}
    for part in ("throughput", "memory"):
        if part not in result and part in previous:  # a part not rerun keeps its last measurement, with its date
            result[part] = previous[part]
            result[f"{part}_date"] = previous.get(f"{part}_date", previous.get("date"))
    summary = result["summary"] = summarize(result)
    print(json.dumps(summary, indent=1))
    Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
