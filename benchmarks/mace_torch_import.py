"""An imported mace-torch model: mace-ase against mace-torch on the same `.model` file.

    python benchmarks/mace_torch_import.py                   # aspirin, cluster, water box; float32 + float64
    python benchmarks/mace_torch_import.py --systems aspirin --dtypes float32 --rounds 1

The model has MACE-OFF23-medium's architecture (ScaleShiftMACE, hidden 128x0e+128x1o,
max_ell 3, correlation 3, 2 interactions, 8 Bessel functions, 5 Å, the ten SPICE elements;
first layer RealAgnosticInteractionBlock, then residual) with mace-torch's random weights,
built by mace-torch 0.3.16 and saved with ``torch.save(model)``. mace-ase reads that file
(``MaceCalculator(path)``: the torch-free reader and converter); mace-torch loads it with
``mace.calculators.MACECalculator(model_paths=path)``. Same weights, same file.

Each measurement is its own subprocess (run.py's workers: energy + forces after moving the
atoms by ~1e-3 Å per call, first call, median of the following calls, peak RSS). The two
implementations alternate, `--rounds` times per case, and the table reports per case the
median over rounds of each one's median and their ratio. The energies of both on the
unmoved structure are recorded too: they must agree (float64: ~1e-12 relative).
Results: benchmarks/results/mace_torch_import.json (appended) and mace_torch_import.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402  (the subprocess runner, thread settings and machine description)

RESULTS = HERE / "results"
IMPLS = ("mace-ase", "mace-torch")
NAMES = {"aspirin": "aspirin (21)", "cluster": "organic cluster (114)", "water": "water box (1,029)"}


def build_model(path: str, **_) -> dict:
    """OFF23-medium-like ScaleShiftMACE with mace-torch's random weights, float64, torch.save'd whole."""
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    elements = run.SPICE_ELEMENTS
    model = modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=len(elements), hidden_irreps=o3.Irreps("128x0e+128x1o"),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.array([-0.7 * z for z in elements]),
        avg_num_neighbors=14.3, atomic_numbers=list(elements), correlation=3, gate=torch.nn.functional.silu,
        atomic_inter_scale=0.8, atomic_inter_shift=0.0,
    )
    torch.save(model, path)
    return {"parameters": int(sum(p.numel() for p in model.parameters()))}


def _calculator(impl: str, dtype: str, path: str):
    if impl == "mace-ase":
        from mace_ase.calculator import MaceCalculator

        return MaceCalculator(path, dtype=dtype)
    import torch
    from mace.calculators import MACECalculator

    torch.set_num_threads(run.THREADS)
    return MACECalculator(model_paths=path, device="cpu", default_dtype=dtype)


def inference(impl: str, system: str, dtype: str, path: str, calls: int = 20, budget_s: float = 20.0, warmup: int = 2,
              **_) -> dict:
    import numpy as np

    import systems

    atoms = systems.SYSTEMS[system]()
    start = time.perf_counter()
    atoms.calc = _calculator(impl, dtype, path)
    load = time.perf_counter() - start
    start = time.perf_counter()
    energy = float(atoms.get_potential_energy())
    atoms.get_forces()
    first = time.perf_counter() - start
    rng = np.random.default_rng(0)
    times = []
    for k in range(calls + warmup):
        atoms.positions = atoms.positions + rng.normal(scale=1e-3, size=atoms.positions.shape)
        start = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        if k >= warmup:
            times.append(time.perf_counter() - start)
            if sum(times) > budget_s and len(times) >= 3:
                break
    return {"atoms": len(atoms), "energy": energy, "load_s": load, "first_call_s": first,
            "median_s": statistics.median(times), "calls": len(times), "peak_rss_gb": run._peak_rss_gb()}


WORKERS = {"build": build_model, "inference": inference}


def table(rows: list[dict]) -> list[str]:
    lines = [
        "| system | dtype | mace-ase ms/call | mace-torch ms/call | mace-torch / mace-ase | peak RSS GB (mace-ase / mace-torch) "
        "| first call s (mace-ase / mace-torch) | energy difference (relative) | rounds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cases = dict.fromkeys((r["system"], r["dtype"]) for r in rows)
    for system, dtype in cases:
        by = {impl: [r for r in rows if (r["system"], r["dtype"], r["impl"]) == (system, dtype, impl) and r["status"] == "ok"]
              for impl in IMPLS}
        if not all(by.values()):
            failed = {impl: next((r["status"] for r in rows if (r["system"], r["dtype"], r["impl"]) == (system, dtype, impl)), "")
                      for impl in IMPLS}
            lines.append(f"| {NAMES[system]} | {dtype} | {failed['mace-ase']} | {failed['mace-torch']} | | | | | |")
            continue
        med = {impl: statistics.median(r["median_s"] for r in by[impl]) * 1e3 for impl in IMPLS}
        rss = {impl: max(r["peak_rss_gb"] for r in by[impl]) for impl in IMPLS}
        first = {impl: statistics.median(r["first_call_s"] for r in by[impl]) for impl in IMPLS}
        e = {impl: by[impl][0]["energy"] for impl in IMPLS}
        lines.append(
            f"| {NAMES[system]} | {dtype} | {med['mace-ase']:.4g} | {med['mace-torch']:.4g} | "
            f"**{med['mace-torch'] / med['mace-ase']:.2f}×** | {rss['mace-ase']:.2f} / {rss['mace-torch']:.2f} | "
            f"{first['mace-ase']:.1f} / {first['mace-torch']:.1f} | "
            f"{abs(e['mace-ase'] - e['mace-torch']) / abs(e['mace-torch']):.1e} | {len(by['mace-ase'])} |"
        )
    return lines


def render(runs: list[dict]) -> list[str]:
    """Markdown: one table per run, newest first, with its date, machine, load and note."""
    lines = ["## Imported mace-torch model: mace-ase against mace-torch on the same `.model` file", "",
             "`python benchmarks/mace_torch_import.py`: MACE-OFF23-medium architecture (128x0e+128x1o, max_ell 3, "
             "correlation 3, 2 layers), random weights, 2 threads each; energy + forces per call; per case the median "
             "over alternating runs of each one's median. Raw numbers in `mace_torch_import.json`.", ""]
    for record in reversed(runs):
        loads = [r["loadavg_1min"] for r in record["rows"] if "loadavg_1min" in r]
        lines += [f"Run of {record['date']}, {record['machine']['cpu']}, 1-min load average {min(loads):.1f}–{max(loads):.1f}"
                  + (f". {record['note']}." if record.get("note") else ".") , ""] + table(record["rows"]) + [""]
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default="aspirin,cluster,water")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--rounds", type=int, default=2, help="alternations of the two implementations per case")
    parser.add_argument("--memory-cap", type=float, default=16.0)
    parser.add_argument("--note", default="", help="a remark stored with this run (what else ran, which version)")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown from the JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(WORKERS[args.worker](**json.loads(args.args))))
        return

    output = RESULTS / "mace_torch_import.json"
    runs = json.loads(output.read_text()) if output.exists() else []
    if args.render:
        (RESULTS / "mace_torch_import.md").write_text("\n".join(render(runs)))
        return
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": run.machine(), "note": args.note,
              "rows": []}
    runs.append(record)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "off23_medium_like.model")
        record["model"] = worker("build", args.memory_cap, path=path)
        for system in args.systems.split(","):
            for dtype in args.dtypes.split(","):
                for _ in range(args.rounds):
                    for impl in IMPLS:
                        row = worker("inference", args.memory_cap, impl=impl, system=system, dtype=dtype, path=path)
                        row.update(impl=impl, system=system, dtype=dtype, loadavg_1min=os.getloadavg()[0])
                        record["rows"].append(row)
                        print(json.dumps(row), flush=True)
                        output.write_text(json.dumps(runs, indent=1))
    (RESULTS / "mace_torch_import.md").write_text("\n".join(render(runs)))
    print("\n".join(render(runs[-1:])))
    import report  # results/README.md again, now with this table

    report.write(json.loads((RESULTS / "results.json").read_text()), RESULTS)


def worker(kind: str, memory_cap_gb: float, **kwargs) -> dict:
    """run.run_worker, pointed at this script's workers."""
    import subprocess

    cmd = [sys.executable, str(Path(__file__)), "--worker", kind, "--args", json.dumps(kwargs)]
    env = {**os.environ, **run.THREAD_ENV, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0.0
    status = None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak = max(peak, next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20)
        except (OSError, StopIteration):
            pass
        if peak > memory_cap_gb:
            proc.kill()
            status = f"OOM (>{memory_cap_gb:g} GB)"
        elif time.time() - start > 1200:
            proc.kill()
            status = "timeout (>1200 s)"
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if status is None and proc.returncode != 0:
        status = "error"
        print(stderr[-3000:], file=sys.stderr)
    if status:
        return {"status": status, "peak_rss_gb": peak}
    return {**json.loads(stdout.strip().splitlines()[-1]), "status": "ok"}


if __name__ == "__main__":
    main()
