"""Write init.extxyz: 64 randomly oriented water molecules at 1 g/cm^3, periodic (read by i-PI and the clients)."""

import numpy as np
from ase import Atoms
from ase.io import write

rng = np.random.default_rng(0)
per_side, length = 4, 12.417
angle = np.deg2rad(104.52) / 2
monomer = np.array([[0, 0, 0], [0.9572 * np.sin(angle), 0.9572 * np.cos(angle), 0],
                    [-0.9572 * np.sin(angle), 0.9572 * np.cos(angle), 0]])
positions = []
for ijk in np.ndindex(per_side, per_side, per_side):
    rotation, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    positions.append((monomer - monomer.mean(0)) @ rotation.T + (np.array(ijk) + 0.5) * length / per_side)
atoms = Atoms("OH2" * per_side**3, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)
write("init.extxyz", atoms)
print(f"init.extxyz: {len(atoms)} atoms, periodic box {length} Å")
