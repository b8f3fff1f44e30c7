"""Benchmark structures: aspirin, MLIPAudit's 46-atom molecule, a ~100-atom organic cluster, periodic water boxes at 1 g/cm^3."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read

DATA = Path("/work/shared/data")
WATER_DENSITY = 1.0  # g/cm^3
WATER_MASS = 18.015  # g/mol
AVOGADRO = 6.02214076e23


def aspirin() -> Atoms:
    """rMD17 aspirin, test frame 0 (21 atoms)."""
    data = np.load(DATA / "rmd17" / "rmd17_aspirin_test_01.npz")
    return Atoms(numbers=data["nuclear_charges"], positions=data["coords"][0])


def hcno46() -> Atoms:
    """MLIPAudit's 46-atom drug-like molecule (C21H18N4O3, its stability and NVE benchmarks' input)."""
    return read(DATA / "mlipaudit_inputs_0.1.8" / "stability" / "small_molecule_HCNO.xyz")


def organic_cluster(target_atoms: int = 100, seed: int = 0, gap: float = 2.6) -> Atoms:
    """Drug-like molecules (xtb_druglike) packed into one cluster of at least `target_atoms`.

    Each new molecule, randomly rotated, slides in from a random direction until its
    closest atom is `gap` Å from the cluster: a compact, non-overlapping van der Waals cluster.
    """
    rng = np.random.default_rng(seed)
    frames = read(DATA / "xtb_druglike" / "xtb_druglike_train.xyz", ":")
    by_formula = {}
    for frame in frames:  # one conformer per molecule
        by_formula.setdefault(frame.get_chemical_formula(), frame)
    molecules = list(by_formula.values())
    order = rng.permutation(len(molecules))
    cluster = Atoms()
    for index in order:
        if len(cluster) >= target_atoms:
            break
        mol = molecules[index].copy()
        mol.positions -= mol.positions.mean(0)
        mol.rotate(rng.uniform(0, 360), rng.normal(size=3), center=(0, 0, 0))
        if len(cluster):
            direction = rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            centre = cluster.positions.mean(0)
            for distance in np.arange(0.0, 60.0, 0.1):
                moved = mol.positions + centre + distance * direction
                d = np.linalg.norm(moved[:, None] - cluster.positions[None], axis=-1).min()
                if d >= gap:
                    break
            mol.positions = moved
        cluster += Atoms(numbers=mol.numbers, positions=mol.positions)
    cluster.info["formula"] = cluster.get_chemical_formula()
    return cluster


def water_box(per_side: int, seed: int = 0) -> Atoms:
    """per_side^3 randomly oriented water molecules on a cubic grid, periodic, at 1 g/cm^3."""
    rng = np.random.default_rng(seed)
    n = per_side**3
    volume = n * WATER_MASS / AVOGADRO / WATER_DENSITY * 1e24  # Å^3
    length = volume ** (1 / 3)
    spacing = length / per_side
    # O-H 0.9572 Å, H-O-H 104.52 degrees
    angle = np.deg2rad(104.52) / 2
    monomer = np.array([[0, 0, 0], [0.9572 * np.sin(angle), 0.9572 * np.cos(angle), 0], [-0.9572 * np.sin(angle), 0.9572 * np.cos(angle), 0]])
    positions = []
    for ijk in np.ndindex(per_side, per_side, per_side):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        positions.append((monomer - monomer.mean(0)) @ q.T + (np.array(ijk) + 0.5) * spacing)
    return Atoms("OH2" * n, positions=np.concatenate(positions), cell=[length] * 3, pbc=True)


SYSTEMS = {
    "aspirin": aspirin,
    "hcno46": hcno46,
    "cluster": organic_cluster,
    "water": lambda: water_box(7),  # 1,029 atoms
}
