"""MLIPAudit's nudged-elastic-band benchmark with one shared calculator (issue 16, items 3 and 4).

    python benchmarks/neb_shared_calculator.py                 # mace-ase (skin 0.5 and 0), mlip
    python benchmarks/neb_shared_calculator.py --runs mace-ase

MLIPAudit 0.1.8's own code (``NudgedElasticBandBenchmark``, standard run mode: minimisation,
500 NEB steps, 500 climbing-image steps, ten images sharing one calculator) on the Grambow
reactions of ``../shared/data/mlipaudit_inputs_0.1.8``, offline, with the bundled model:

- ``mace-ase``: ``MaceCalculator()`` with default settings (skin 0.5 Å, result cache on);
- ``mace-ase skin=0``: a fresh neighbour list every call;
- ``mlip``: mlip 0.2.5's ForceField on the same archive (MLIPAudit's own path for mlip models).

Per run and reaction: the final NEB fmax (MLIPAudit's convergence test: < 0.05 eV/Å), the
score, wall time, model calls (mace-ase) and compilations. Each run is its own process.
Results: benchmarks/results/neb_shared_calculator.json. Exit status 1 if the default mace-ase
run fails to converge a reaction that the skin=0 run converges (history dependence).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INPUTS = HERE.parent.parent / "shared" / "data" / "mlipaudit_inputs_0.1.8"
BUNDLED = HERE.parent / "weights" / "mace-ase-small-xtb.zip"
RUNS = {"mace-ase": {"skin": 0.5}, "mace-ase skin=0": {"skin": 0.0}, "mlip": {}}
THRESHOLD = 0.05  # eV/Å, MLIPAudit's FINAL_CONVERGENCE_THRESHOLD


def worker(run: str) -> dict:
    import numpy as np
    from mlipaudit.benchmarks.nudged_elastic_band.nudged_elastic_band import NudgedElasticBandBenchmark

    if run == "mlip":
        from mlip.models.model_io import load_model_from_zip
        from mlip.models_v1 import Mace

        force_field = load_model_from_zip(Mace, str(BUNDLED))
    else:
        from mace_ase.calculator import MaceCalculator

        force_field = MaceCalculator(**RUNS[run])
    start = time.perf_counter()
    benchmark = NudgedElasticBandBenchmark(force_field, data_input_dir=INPUTS, run_mode="standard")
    benchmark.run_model()
    result = benchmark.analyze()
    wall = time.perf_counter() - start
    fmax = [None if state is None else float(np.sqrt((state.forces**2).sum(axis=1).max()))
            for state in benchmark.model_output.simulation_states]
    out = {"reactions": list(benchmark._reaction_ids), "fmax": fmax, "score": result.score, "wall_s": wall}
    if run != "mlip":
        out.update(model_calls=force_field.timings["calls"], result_cache_hits=force_field.result_cache_hits,
                   compilations=force_field.compile_count)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", default=",".join(RUNS))
    parser.add_argument("--output", default=str(HERE / "results" / "neb_shared_calculator.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker)))
        return 0

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3"}
    rows = []
    for run in args.runs.split(","):
        load = os.getloadavg()[0]
        proc = subprocess.run([sys.executable, __file__, "--worker", run], capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            rows.append({"run": run, "status": "error"})
            continue
        row = {"run": run, "status": "ok", "loadavg_1min": load, **json.loads(proc.stdout.strip().splitlines()[-1])}
        rows.append(row)
        print(json.dumps(row), flush=True)
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    output = Path(args.output)
    history = json.loads(output.read_text()) if output.exists() else []
    output.write_text(json.dumps(history + [record], indent=1))

    by_run = {r["run"]: r for r in rows if r["status"] == "ok"}
    default, fresh = by_run.get("mace-ase"), by_run.get("mace-ase skin=0")
    if default and fresh:
        regressions = [name for name, f0, f in zip(default["reactions"], fresh["fmax"], default["fmax"])
                       if f0 is not None and f0 < THRESHOLD and (f is None or f >= THRESHOLD)]
        if regressions:
            print(f"FAIL: converged with skin=0 but not with the default settings: {regressions}")
            return 1
        print("default settings converge every reaction that skin=0 converges")
    return 0


if __name__ == "__main__":
    sys.exit(main())
