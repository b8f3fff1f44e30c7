"""Peak memory of MaceCalculator.get_hessian against one force call (issue 12, item 6).

    python benchmarks/hessian_memory.py                  # water boxes of 192 and 1,029 atoms
    python benchmarks/hessian_memory.py --block 4,8,16   # rows per block

Bundled model, float64 (Hessians are for vibrations and phonons), periodic water boxes at
1 g/cm^3 (``systems.water_box``). Each measurement runs in its own process; the parent polls
its resident memory (peak RSS) and kills it above --memory-cap GB ("OOM"). Also reported:
XLA's own estimate of the compiled program's working memory (temporaries + arguments +
outputs), which leaves out the interpreter, JAX and the model (~0.5 GB of RSS in every row).

- ``forces``: one energy + forces (+ stress) call, the reference;
- ``hessian``: ``get_hessian`` (rows in blocks of --block Hessian-vector products), the rows
  of the first 16 atoms (192-atom box) or 10 atoms (1,029 atoms) only (``indices=``): the peak
  is per block, the same for any number of rows; the full Hessian takes 576 / 48 = 12x
  (192 atoms) or 3,087 / 30 ~ 100x (1,029 atoms) the time shown;
- ``jax.hessian``: the previous implementation (``jax.hessian`` of the energy over the padded
  graph, all 3N tangents at once), for comparison.

Results: benchmarks/results/hessian_memory.json.
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
ENV = {"OMP_NUM_THREADS": "2", "TF_CPP_MIN_LOG_LEVEL": "3",
       "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=2"}


def _xla_bytes(program) -> int:
    memory = program.memory_analysis()
    return int(memory.temp_size_in_bytes + memory.argument_size_in_bytes + memory.output_size_in_bytes)


def worker(kind: str, per_side: int, block: int, atoms_rows: int | None) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    import systems
    from mace_ase.calculator import MaceCalculator
    from mace_ase.model import node_energies

    atoms = systems.water_box(per_side)
    calc = MaceCalculator(dtype="float64", hessian_block=max(block, 1), compilation_cache=False)
    start = time.perf_counter()
    out = {"atoms": len(atoms)}
    if kind == "forces":
        calc.calculate(atoms, ["energy", "forces"])
        out["rows"] = 0
    elif kind == "hessian":
        indices = None if atoms_rows is None else list(range(atoms_rows))
        hessian = calc.get_hessian(atoms, indices=indices)
        out["rows"] = hessian.shape[0]
        out["max_asymmetry"] = float(np.abs(hessian[:, : hessian.shape[0]] - hessian[:, : hessian.shape[0]].T).max())
    else:  # the previous implementation: jax.hessian over the padded graph
        structure = calc._structure(atoms, verlet=False)
        graph = calc._pad([structure])

        def hessian(params, graph):
            def energy(positions):
                return jnp.sum(node_energies(params, calc._device_config, graph, positions, graph.cells))

            return jax.hessian(energy)(graph.positions)

        with jax.enable_x64(True):
            program = jax.jit(hessian).lower(calc.params, graph).compile()
            out["xla_bytes"] = _xla_bytes(program)
            jax.block_until_ready(program(calc.params, graph))
        out["rows"] = 3 * len(atoms)
    out["seconds"] = time.perf_counter() - start
    if kind != "jax.hessian":
        out["xla_bytes"] = _xla_bytes(next(reversed(calc._executables.values())))
        out["edges"] = calc.executables[-1][2]
    return out


def run_worker(memory_cap_gb: float, **kwargs) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(kwargs)]
    env = {**os.environ, **ENV, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak, status = 0.0, None
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 2**20
        except (OSError, StopIteration):
            rss = 0.0
        peak = max(peak, rss)
        if rss > memory_cap_gb:
            proc.kill()
            status = f"OOM (>{memory_cap_gb:g} GB)"
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if status is None and proc.returncode != 0:
        status = "error"
        print(stderr[-3000:], file=sys.stderr)
    row = {**kwargs, "peak_rss_gb": peak, "status": status or "ok"}
    if status is None:
        row.update(json.loads(stdout.strip().splitlines()[-1]))
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block", default="1,8", help="rows per block (comma-separated values)")
    parser.add_argument("--memory-cap", type=float, default=12.0)
    parser.add_argument("--output", default=str(HERE / "results" / "hessian_memory.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(**json.loads(args.worker))))
        return

    cases = []
    for per_side, atoms_rows in ((4, 16), (7, 10)):
        cases.append(dict(kind="forces", per_side=per_side, block=0, atoms_rows=None))
        cases += [dict(kind="hessian", per_side=per_side, block=int(b), atoms_rows=atoms_rows) for b in args.block.split(",")]
    cases.append(dict(kind="jax.hessian", per_side=4, block=0, atoms_rows=None))
    rows = []
    for case in cases:
        row = run_worker(args.memory_cap, **case)
        row["loadavg_1min"] = os.getloadavg()[0]
        rows.append(row)
        print(json.dumps(row), flush=True)
    output = Path(args.output)
    history = json.loads(output.read_text()) if output.exists() else []
    record = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "rows": rows}
    output.write_text(json.dumps(history + [record], indent=1))


if __name__ == "__main__":
    main()
