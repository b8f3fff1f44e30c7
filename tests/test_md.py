"""MD and relaxations with MaceCalculator: energy conservation, compile counts, convergence.

The model is the small test MACE fitted to rMD17 aspirin (tests/data/make_md_model.py):
a random model has no bonds, and aspirin would simply evaporate.
"""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
import pytest
from ase import units
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from ase.neighborlist import neighbor_list
from ase.optimize import BFGS
from conftest import shared_data

from mace_ase.archive import load_archive
from mace_ase.calculator import MaceCalculator

MD_MODEL = Path(__file__).parent / "data" / "aspirin-small.zip"


@pytest.fixture(scope="module")
def aspirin_model():
    return load_archive(MD_MODEL)


@pytest.fixture
def aspirin_300K():
    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    atoms = ase.Atoms(numbers=data["nuclear_charges"], positions=data["coords"][0])
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    return atoms


def largest_distance(atoms) -> float:
    d = atoms.positions[:, None] - atoms.positions[None]
    return float(np.sqrt((d**2).sum(-1)).max())


def nve_drift(atoms, model, dtype, steps=2000, timestep_fs=0.5):
    """Total-energy drift (slope of a line fit, eV/atom/ps) and the run's energies."""
    atoms.calc = MaceCalculator(model, dtype=dtype)
    dynamics = VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    total, potential = [], []

    def record():
        potential.append(atoms.get_potential_energy())
        total.append(potential[-1] + atoms.get_kinetic_energy())

    dynamics.attach(record, interval=1)
    dynamics.run(steps)
    time_ps = np.arange(len(total)) * timestep_fs * 1e-3
    slope = np.polyfit(time_ps, np.array(total), 1)[0] / len(atoms)
    return slope, np.array(total), np.array(potential), atoms.calc


@pytest.mark.slow
def test_nve_velocity_verlet_conserves_energy(aspirin_model, aspirin_300K):
    start = aspirin_300K.copy()
    drift, total, potential, calc = nve_drift(aspirin_300K, aspirin_model, "float64")
    print(f"\nNVE aspirin 300 K, 0.5 fs x 2000, float64: drift {drift:.2e} eV/atom/ps, "
          f"total-energy std {total.std():.2e} eV vs potential std {potential.std():.2e} eV")
    assert abs(drift) < 1e-4
    # The potential energy really moves (a bound, vibrating molecule) while the total does not.
    assert potential.std() > 0.05 and total.std() < 0.02 * potential.std()
    assert largest_distance(aspirin_300K) < largest_distance(start) + 2.0  # still one molecule
    assert 100 < aspirin_300K.get_temperature() < 600
    assert calc.compile_count <= 2 and 1 < calc.neighbour_builds < 200  # two edge buckets at most; skin list reused

    drift32, total32, _, calc32 = nve_drift(start, aspirin_model, "float32")
    print(f"NVE float32: drift {drift32:.2e} eV/atom/ps, total-energy std {total32.std():.2e} eV")
    assert abs(drift32) < 1e-3


@pytest.mark.slow
def test_langevin_across_a_bucket_boundary_compiles_twice(aspirin_model, aspirin_300K):
    """1,000 steps whose edge count wanders across a rung of the size ladder (aspirin at 300 K:
    ~286-302 edges around the rung 288): both programs stay cached, so two compilations in all."""
    from mace_ase.neighbours import size_bucket

    calc = MaceCalculator(aspirin_model)  # float32, the MD default
    aspirin_300K.calc = calc
    dynamics = Langevin(aspirin_300K, 0.5 * units.fs, temperature_K=300, friction=0.02 / units.fs, fixcm=False,
                        rng=np.random.default_rng(1))
    temperatures, buckets = [], set()

    def record():
        temperatures.append(aspirin_300K.get_temperature())
        edges = np.count_nonzero(neighbor_list("d", aspirin_300K, aspirin_model.cutoff) < aspirin_model.cutoff)
        buckets.add(size_bucket(edges))  # by ASE's own neighbour list

    dynamics.attach(record, interval=1)
    dynamics.run(1000)
    assert len(buckets) == 2  # the run did cross the boundary, many times
    assert calc.compile_count == 2 and sorted(e for _, _, e, _ in calc.executables) == sorted(buckets)
    assert calc.timings["calls"] == 1001
    assert 200 < np.mean(temperatures[200:]) < 400  # the thermostat holds 300 K on a sane surface


def test_bfgs_relaxes_a_distorted_molecule_with_at_most_two_compilations(aspirin_model):
    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    atoms = ase.Atoms(numbers=data["nuclear_charges"], positions=data["coords"][5])
    atoms.rattle(0.1, seed=7)
    calc = MaceCalculator(aspirin_model, dtype="float64")
    atoms.calc = calc
    start_energy = atoms.get_potential_energy()
    assert BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
    assert np.abs(atoms.get_forces()).max() < 0.01
    assert atoms.get_potential_energy() < start_energy - 0.1
    assert calc.compile_count <= 2


def test_variable_cell_relaxation_converges(aspirin_model):
    """Aspirin in a periodic box smaller than 2 x cutoff (it meets its own images): atoms and cell relax."""
    from ase.calculators.fd import calculate_numerical_stress
    from ase.filters import FrechetCellFilter
    from ase.neighborlist import neighbor_list

    data = np.load(shared_data("rmd17", "rmd17_aspirin_train_01.npz"))
    atoms = ase.Atoms(numbers=data["nuclear_charges"], positions=data["coords"][0])
    atoms.cell = np.diag([7.5, 8.0, 7.0])
    atoms.center()
    atoms.pbc = True
    calc = MaceCalculator(aspirin_model, dtype="float64")
    atoms.calc = calc
    start_volume, start_stress = atoms.get_volume(), atoms.get_stress()
    assert BFGS(FrechetCellFilter(atoms), logfile=None).run(fmax=0.05, steps=300)
    assert np.abs(atoms.get_forces()).max() < 0.05
    stress = atoms.get_stress()
    assert np.abs(stress * atoms.get_volume()).max() < 0.05 * len(atoms)  # the filter's test: virial / N < fmax
    assert np.abs(stress).max() < 0.05 * np.abs(start_stress).max()
    np.testing.assert_allclose(calculate_numerical_stress(atoms, eps=1e-5), stress, atol=1e-7)
    # A real minimum of the crystal, not images pushed out of range: atoms still meet their images.
    _, _, shifts = neighbor_list("ijS", atoms, aspirin_model.cutoff)
    assert np.any(shifts != 0)
    print(f"\nvariable cell: volume {start_volume:.1f} -> {atoms.get_volume():.1f} Å^3, "
          f"max |stress| {np.abs(start_stress).max():.2e} -> {np.abs(stress).max():.2e} eV/Å^3, "
          f"{calc.compile_count} compilation(s), {calc.neighbour_builds} neighbour builds")
