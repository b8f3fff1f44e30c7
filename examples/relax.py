"""Relax aspirin with MaceCalculator and BFGS.

    python examples/relax.py                                  # the bundled model
    python examples/relax.py tests/data/aspirin-small.zip     # any model archive or name
"""

import argparse
from pathlib import Path

from ase.io import read
from ase.optimize import BFGS

from mace_ase import MaceCalculator

parser = argparse.ArgumentParser()
parser.add_argument("model", nargs="?", default=None, help="model archive or registered name")
parser.add_argument("--steps", type=int, default=200)
args = parser.parse_args()

atoms = read(Path(__file__).with_name("aspirin.xyz"))
atoms.calc = MaceCalculator(args.model)
print(f"initial energy {atoms.get_potential_energy():.4f} eV")

converged = BFGS(atoms).run(fmax=0.05, steps=args.steps)
print(f"final energy {atoms.get_potential_energy():.4f} eV, converged: {converged}")
atoms.write("aspirin-relaxed.xyz")
