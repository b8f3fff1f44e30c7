"""Write water.data: 64 randomly oriented water molecules at 1 g/cm^3 (12.4 Å box), LAMMPS types 1 = H, 2 = O."""

import numpy as np
from ase import Atoms
from ase.io import write

rng = np.random.default_rng(0)
per_side, length = 4, 12.417  # (64 * 18.015 g/mol / N_A / 1 g/cm^3)^(1/3)
angle = np.deg2rad(104.52) / 2
monomer = np.array([[0, 0, 0], [0.9572 * np.sin(angle), 0.9572 * np.cos(angle), 0],
                    [-0.9572 * np.sin(angle), 0.9572 * np.cos(angle), 0]])
positions = []
for ijk in np.ndindex(per_side, per_side, per_side):
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    positions.append((monomer - monomer.mean(0)) @ rotation.T + (np.array(ijk) + 0.5) * length / per_side)
atoms = Atoms("OH2" * per_side**3, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)
write("water.data", atoms, format="lammps-data", specorder=["H", "O"], masses=True, units="metal",
      atom_style="atomic")
print(f"water.data: {len(atoms)} atoms")
