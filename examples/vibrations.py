"""Vibrational frequencies of aspirin from the analytic Hessian of MaceCalculator.

    python examples/vibrations.py                             # the bundled model
    python examples/vibrations.py tests/data/aspirin-small.zip

Finite differences work too (ase.vibrations.Vibrations(atoms).run()), at 6N+1 energy
and force evaluations instead of one Hessian.
"""

import argparse
from pathlib import Path

from ase.io import read
from ase.optimize import BFGS
from ase.vibrations import VibrationsData

from mace_ase import MaceCalculator

parser = argparse.ArgumentParser()
parser.add_argument("model", nargs="?", default=None, help="model archive or registered name")
parser.add_argument("--steps", type=int, default=500, help="relaxation steps first (0: none)")
args = parser.parse_args()

atoms = read(Path(__file__).with_name("aspirin.xyz"))
atoms.calc = MaceCalculator(args.model, dtype="float64")  # float64 for a tight minimum
if args.steps:  # frequencies belong to a minimum: relax first
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=args.steps)

hessian = atoms.calc.get_hessian(atoms)  # [3N, 3N], eV/Å^2
vibrations = VibrationsData.from_2d(atoms, hessian)
print(vibrations.tabulate())
