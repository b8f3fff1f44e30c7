"""Langevin MD of aspirin at 300 K with MaceCalculator, logged with ASE's MDLogger.

    python examples/md.py                                     # the bundled model
    python examples/md.py tests/data/aspirin-small.zip --steps 1000
"""

import argparse
from pathlib import Path

import numpy as np
from ase import units
from ase.io import read
from ase.md import MDLogger
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

from mace_ase import MaceCalculator

parser = argparse.ArgumentParser()
parser.add_argument("model", nargs="?", default=None, help="model archive or registered name")
parser.add_argument("--steps", type=int, default=1000)
args = parser.parse_args()

atoms = read(Path(__file__).with_name("aspirin.xyz"))
atoms.calc = MaceCalculator(args.model)  # float32: fast, and plenty for MD

rng = np.random.default_rng(0)
thermalize_momenta(atoms, temperature_K=300, rng=rng)
Stationary(atoms)
ZeroRotation(atoms)

dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs,
               fixcm=False, rng=rng, trajectory="aspirin-md.traj", loginterval=10)
dyn.attach(MDLogger(dyn, atoms, "-", header=True, peratom=False), interval=10)
dyn.run(args.steps)
print(f"compilations: {atoms.calc.compile_count}, final temperature {atoms.get_temperature():.0f} K")
