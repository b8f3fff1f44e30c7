"""mace-ase against mlip and mace-torch: inference, MD, scaling, training step.

    python benchmarks/run.py                       # everything (~30 min on 2 cores)
    python benchmarks/run.py --only inference,md   # some sections
    python benchmarks/run.py --label before-x      # tag the mace-ase rows (before/after lines)

Every measurement runs in its own subprocess (a fresh interpreter, so compile time and
peak RSS are its own), watched by the parent, which kills it when its resident memory
passes --memory-cap (default 20 GB) and records "OOM". Results are appended to
benchmarks/results/results.json and rendered as benchmarks/results/README.md (table) and
benchmarks/results/scaling.png.
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
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
THREADS = 2  # the benchmark machine has 2 cores; every implementation gets both
THREAD_ENV = {
    "OMP_NUM_THREADS": str(THREADS),
    "MKL_NUM_THREADS": str(THREADS),
    "XLA_FLAGS": f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={THREADS}",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1",  # e3nn (torch) loads its own constants with pickle
}
SPICE_ELEMENTS = (1, 6, 7, 8, 9, 15, 16, 17, 35, 53)
IMPLEMENTATIONS = ("mace-ase", "mlip", "mace-torch")
BUNDLED = HERE.parent / "weights" / "mace-ase-small-xtb.zip"
# Architectures: the mace-organics card (random weights, built by mlip) and the bundled model's
# (its own trained archive: 2 layers, 32 channels, l_max 2, radial MLP 64-64-64).
ARCHS = {
    "card": dict(channels=128, l_max=3, radial_mlp=[64, 64, 64], avg_num_neighbors=12.3),
    "bundled": dict(channels=32, l_max=2, radial_mlp=[64, 64, 64], avg_num_neighbors=16.49),
}


# ------------------------------------------------------------------ workers
# Each worker runs in a fresh process and prints one JSON line.


def _card_archive(directory: Path) -> Path:
    """mlip's v1 MACE with the mace-organics card config (random weights), saved as mlip's zip."""
    path = directory / "card.zip"
    if path.exists():
        return path
    import jax

    from mlip.data import DatasetInfo
    from mlip.data.helpers.dummy_init_graph import get_dummy_graph_for_model_init
    from mlip.models import ForceField
    from mlip.models.model_io import save_model_to_zip
    from mlip.models_v1 import Mace
    from mlip.models_v1.predictor_v1 import ForceFieldPredictorV1
    from mlip.typing.properties import Properties

    info = DatasetInfo(
        atomic_energies_map={z: -0.7 * z for z in SPICE_ELEMENTS}, graph_cutoff_angstrom=5.0,
        avg_num_neighbors=12.3, scaling_mean=0.0, scaling_stdev=1.0,
    )
    config = Mace.Config(
        num_layers=2, num_channels=128, l_max=3, node_symmetry=3, correlation=2, readout_irreps=("16x0e", "0e"),
        num_bessel=8, activation="silu", radial_envelope="polynomial_envelope",
        symmetric_tensor_product_basis=False, include_pseudotensors=False, atomic_energies="average",
    )
    predictor = ForceFieldPredictorV1(mlip_network=Mace(config=config, dataset_info=info), required_properties=Properties(stress=True))
    params = predictor.init(jax.random.key(0), get_dummy_graph_for_model_init())
    save_model_to_zip(str(path), ForceField(predictor, params))
    return path


def _calculator(impl: str, dtype: str, archive: Path, arch: str = "card"):
    if impl == "mace-ase":
        from mace_ase.calculator import MaceCalculator

        return MaceCalculator(str(archive), dtype=dtype)
    if impl == "mlip":
        import jax

        jax.config.update("jax_enable_x64", dtype == "float64")
        import jax.numpy as jnp
        from mlip.models.model_io import load_model_from_zip
        from mlip.models_v1 import Mace
        from mlip.simulation.ase.mlip_ase_calculator import MLIPForceFieldASECalculator

        ff = load_model_from_zip(Mace, str(archive))
        ff = type(ff)(ff.predictor, jax.tree.map(lambda a: a.astype(jnp.dtype(dtype)), ff.params))

        class Calc(MLIPForceFieldASECalculator):  # mlip's calculator needs the atoms up front
            def __init__(self):
                self._ff = ff
                self._initialised = False

            def bind(self, atoms):
                MLIPForceFieldASECalculator.__init__(self, atoms, 1.25, self._ff)

        return Calc()
    if impl == "mace-torch":
        import numpy as np
        import torch
        from e3nn import o3
        from mace import modules
        from mace.calculators import MACECalculator

        torch.set_num_threads(THREADS)
        torch.set_default_dtype(getattr(torch, dtype))
        torch.manual_seed(0)
        a = ARCHS[arch]
        hidden = "+".join(f"{a['channels']}x{l}{'eo'[l % 2]}" for l in range(a["l_max"] + 1))
        model = modules.ScaleShiftMACE(
            r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=a["l_max"],
            interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
            num_interactions=2, num_elements=len(SPICE_ELEMENTS), radial_MLP=a["radial_mlp"],
            hidden_irreps=o3.Irreps(hidden), MLP_irreps=o3.Irreps("16x0e"),
            atomic_energies=np.array([-0.7 * z for z in SPICE_ELEMENTS]), avg_num_neighbors=a["avg_num_neighbors"],
            atomic_numbers=list(SPICE_ELEMENTS), correlation=2, gate=torch.nn.functional.silu,
            atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        )
        return MACECalculator(models=model.to(getattr(torch, dtype)), device="cpu", default_dtype=dtype)
    raise ValueError(impl)


def _attach(impl, calc, atoms):
    if impl == "mlip":
        calc.bind(atoms)
    atoms.calc = calc


def _xla_compile_counter():
    """Counts XLA backend compilations in this process (all of them, any library)."""
    import jax

    counter = {"n": 0}

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            counter["n"] += 1

    jax.monitoring.register_event_duration_secs_listener(listener)
    return counter


def _peak_rss_gb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker_inference(impl, system, dtype, archive, calls=20, budget_s=20.0, warmup=2, arch="card", **_):
    import numpy as np

    import systems

    atoms = systems.SYSTEMS[system]() if not system.startswith("water") or system == "water" else systems.water_box(int(system[5:]))
    calc = _calculator(impl, dtype, archive, arch)
    _attach(impl, calc, atoms)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    atoms.get_forces()
    first = time.perf_counter() - start
    times = []
    spent = 0.0
    for k in range(calls + warmup):
        atoms.positions = atoms.positions + rng.normal(scale=1e-3, size=atoms.positions.shape)  # a new geometry every call
        start = time.perf_counter()
        atoms.get_potential_energy()
        atoms.get_forces()
        elapsed = time.perf_counter() - start
        if k >= warmup:
            times.append(elapsed)
            spent += elapsed
            if spent > budget_s and len(times) >= 3:
                break
    out = {"atoms": len(atoms), "first_call_s": first, "median_s": statistics.median(times), "calls": len(times), "peak_rss_gb": _peak_rss_gb()}
    if impl == "mace-ase":
        t = calc.timings  # where a call's time goes (host work vs the compiled model), per call
        out.update(compile_count=calc.compile_count, edges=calc.executables[-1][2],
                   host_ms_per_call={k: 1e3 * t[k] / t["calls"] for k in ("neighbours", "padding", "model")})
    return out


def worker_md(impl, system, dtype, archive, steps=1000, **_):
    import numpy as np
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    import systems

    counter = _xla_compile_counter() if impl in ("mace-ase", "mlip") else None
    atoms = systems.SYSTEMS[system]()
    calc = _calculator(impl, dtype, archive)
    _attach(impl, calc, atoms)
    inside = {"s": 0.0}
    original = calc.calculate

    def timed(*args, **kwargs):  # wall time inside the calculator's calculate()
        start = time.perf_counter()
        original(*args, **kwargs)
        inside["s"] += time.perf_counter() - start

    calc.calculate = timed
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, rng=np.random.default_rng(0))
    start = time.perf_counter()
    dyn.run(1)  # the first step compiles
    first = time.perf_counter() - start
    compiles_first = counter["n"] if counter else None
    inside["s"] = 0.0
    if impl == "mace-ase":
        calc.timings.update(neighbours=0.0, padding=0.0, model=0.0, calls=0)
        traces_first = calc.compile_count
    start = time.perf_counter()
    dyn.run(steps)
    wall = time.perf_counter() - start
    out = {
        "atoms": len(atoms), "steps": steps, "first_step_s": first, "steps_per_s": steps / wall,
        "outside_calculator_share": 1 - inside["s"] / wall, "peak_rss_gb": _peak_rss_gb(),
        "xla_compiles_first_step": compiles_first,
        "xla_compiles_after_first_step": counter["n"] - compiles_first if counter else None,
    }
    if impl == "mace-ase":
        t = calc.timings
        out.update(
            outside_model_share=1 - t["model"] / wall, neighbours_share=t["neighbours"] / wall,
            padding_share=t["padding"] / wall, neighbour_builds=calc.neighbour_builds,
            traces_after_first_step=calc.compile_count - traces_first,
        )
    return out


def worker_startup(impl, system, dtype, archive, cache_dir=None, **_):
    """First energy+forces call in a fresh process with the persistent compilation cache."""
    os.environ["JAX_COMPILATION_CACHE_DIR"] = cache_dir
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import systems

    start_process = time.perf_counter()
    atoms = systems.SYSTEMS[system]()
    calc = _calculator(impl, dtype, archive)
    _attach(impl, calc, atoms)
    start = time.perf_counter()
    atoms.get_forces()
    return {"first_call_s": time.perf_counter() - start, "construct_and_first_call_s": time.perf_counter() - start_process}


def worker_training(**kwargs):
    import training_step

    return training_step.worker_training(**kwargs)


def worker_archive(directory, **_):
    return {"archive": str(_card_archive(Path(directory)))}


WORKERS = {"archive": worker_archive, "inference": worker_inference, "md": worker_md, "startup": worker_startup, "training": worker_training}


# ------------------------------------------------------------------- parent


def run_worker(kind: str, memory_cap_gb: float, timeout_s: float, source: str | None = None, **kwargs) -> dict:
    """Run one worker in a subprocess; kill it if its RSS passes the cap (recorded as OOM).

    source: a directory holding another `mace_ase` package to import instead (before/after runs).
    """
    cmd = [sys.executable, str(Path(__file__)), "--worker", kind, "--args", json.dumps(kwargs, default=str)]
    path = [str(HERE)] + ([source] if source else []) + [os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, **THREAD_ENV, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, start, status = 0.0, time.time(), None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20
            peak = max(peak, rss)
        except (OSError, StopIteration):
            rss = 0.0
        if rss > memory_cap_gb:
            proc.kill()
            status = f"OOM (>{memory_cap_gb:g} GB)"
        elif time.time() - start > timeout_s:
            proc.kill()
            status = f"timeout (>{timeout_s:g} s)"
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    if status is None and proc.returncode != 0:
        if proc.returncode in (-9, 137):
            status = "OOM (killed)"
        elif any(m in stderr for m in ("RESOURCE_EXHAUSTED", "Out of memory", "MemoryError")):
            status = "OOM (allocation failed)"
        else:
            status = "error"
        print(stderr[-3000:], file=sys.stderr)
    if status:
        return {"status": status, "peak_rss_gb": peak}
    result = json.loads(stdout.strip().splitlines()[-1])
    result["status"] = "ok"
    return result


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import importlib.metadata as md

    versions = {}
    for pkg in ("mace-ase", "jax", "e3nn-jax", "mlip", "mace-torch", "torch", "ase"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": THREADS, "python": platform.python_version(), "versions": versions}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="inference,md,scaling,training,startup")
    parser.add_argument("--impls", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--systems", default="aspirin,cluster,water")
    parser.add_argument("--archs", default="card,bundled", help="card: the mace-organics card config; bundled: the bundled model's")
    parser.add_argument("--bundled-systems", default="hcno46,aspirin", help="inference systems for the bundled architecture")
    parser.add_argument("--dtypes", default="float32,float64")
    parser.add_argument("--label", default="", help="tag for this run's rows (before/after an optimisation)")
    parser.add_argument("--mace-ase-src", default=None, help="directory with another mace_ase package to benchmark (before/after)")
    parser.add_argument("--memory-cap", type=float, default=16.0, help="GB of RSS before a worker is killed")
    parser.add_argument("--md-steps", type=int, default=1000)
    parser.add_argument("--md-systems", default="aspirin,water")
    parser.add_argument("--water-md-steps", type=int, default=20, help="MD steps on the water box (seconds per step on 2 cores)")
    parser.add_argument("--scaling", default="3,5,7,10,12,15", help="water boxes: molecules per side")
    parser.add_argument("--output", default=str(RESULTS / "results.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--args", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kwargs = json.loads(args.args)
        print(json.dumps(WORKERS[args.worker](**kwargs)))
        return

    sections = args.only.split(",")
    impls = args.impls.split(",")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(output.read_text()) if output.exists() else []
    run = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "label": args.label, "machine": machine(), "rows": []}
    runs.append(run)

    def record(section, **row):
        row["loadavg_1min"] = os.getloadavg()[0]
        run["rows"].append({"section": section, **row})
        print(json.dumps({"section": section, **row}), flush=True)
        output.write_text(json.dumps(runs, indent=1))

    with tempfile.TemporaryDirectory() as tmp:
        # Built in a worker: the parent stays free of JAX (and of its memory).
        archive = Path(tmp) / "card.zip"
        run_worker("archive", memory_cap_gb=args.memory_cap, timeout_s=600, directory=tmp)
        common = dict(archive=str(archive), memory_cap_gb=args.memory_cap, source=args.mace_ase_src)
        if "inference" in sections:
            archs = args.archs.split(",")
            for arch in archs:
                arch_systems = args.systems if arch == "card" else args.bundled_systems
                archive_path = str(archive if arch == "card" else BUNDLED)
                for system in arch_systems.split(","):
                    for dtype in args.dtypes.split(","):
                        for impl in impls:
                            r = run_worker("inference", impl=impl, system=system, dtype=dtype, timeout_s=900, arch=arch,
                                           **{**common, "archive": archive_path})
                            record("inference", impl=impl, system=system, dtype=dtype, **({"arch": arch} if arch != "card" else {}), **r)
        if "startup" in sections and "mace-ase" in impls:
            cache = Path(tmp) / "jax-cache"
            for attempt in ("cold cache", "warm cache"):
                r = run_worker("startup", impl="mace-ase", system="aspirin", dtype="float32", cache_dir=str(cache), timeout_s=300, **common)
                record("startup", impl="mace-ase", system="aspirin", dtype="float32", cache=attempt, **r)
        if "md" in sections:
            for system in args.md_systems.split(","):
                for impl in impls:
                    steps = args.md_steps if system == "aspirin" else args.water_md_steps
                    oom = [r for r in run["rows"] if r["section"] == "inference" and r["impl"] == impl and r["system"] == system
                           and r["dtype"] == "float32" and r["status"].startswith("OOM")]
                    if oom:  # do not fill the shared machine a second time
                        record("md", impl=impl, system=system, dtype="float32", status=f"skipped: {oom[0]['status']} in inference")
                        continue
                    r = run_worker("md", impl=impl, system=system, dtype="float32", steps=steps, timeout_s=1800, **common)
                    record("md", impl=impl, system=system, dtype="float32", **r)
        if "scaling" in sections:
            for per_side in map(int, args.scaling.split(",")):
                r = run_worker("inference", impl="mace-ase", system=f"water{per_side}", dtype="float32", calls=3, budget_s=5, warmup=1, timeout_s=900, **common)
                record("scaling", impl="mace-ase", system=f"water{per_side}", dtype="float32", **r)
                if r["status"] != "ok":
                    break
        if "training" in sections:
            for impl in ("mace-ase", "mlip"):
                r = run_worker("training", impl=impl, system="aspirin", dtype="float32", timeout_s=900, **common)
                record("training", impl=impl, **r)

    import report

    report.write(runs, output.parent)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
