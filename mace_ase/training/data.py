"""Training data: read once, convert to eV / Å / eV/Å once, split by a seed.

Every reader returns a list of :class:`Frame` in mace-ase's units, whatever the
file used. Supported inputs:

* anything ASE reads (extxyz, ...), energy and forces under configurable keys
  (``energy``/``forces`` as calculator results, or e.g. ``energy_xtb`` in
  ``atoms.info`` and ``forces_xtb`` in ``atoms.arrays``);
* rMD17 ``.npz`` (``coords``, ``energies``, ``forces``, ``nuclear_charges``; kcal/mol);
* ANI/SPICE-style HDF5 (one group per molecule; Hartree, optionally Bohr and
  gradients instead of forces). h5py is imported only when an HDF5 file is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

KCAL_PER_MOL = 0.0433641  # eV (rMD17 README, the MACE paper's conversion)
HARTREE = 27.211386245988  # eV (CODATA 2018, as ase.units.Hartree)
BOHR = 0.529177210903  # Å


@dataclass
class Frame:
    """One labelled structure in eV, Å and eV/Å."""

    numbers: np.ndarray  # [n] atomic numbers
    positions: np.ndarray  # [n, 3] Å
    energy: float  # eV, total
    forces: np.ndarray  # [n, 3] eV/Å
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, bool))
    info: dict = field(default_factory=dict)  # e.g. mol_name, config_type

    def __len__(self) -> int:
        return len(self.numbers)

    def to_atoms(self):
        import ase

        return ase.Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc, info=dict(self.info))


def is_isolated_atom(frame: Frame) -> bool:
    return len(frame) == 1 and str(frame.info.get("config_type", "")).lower() == "isolatedatom"


# --------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------


def label(atoms, key: str, per_atom: bool):
    """A reference label of an ASE frame: its calculator's results, else ``info`` (per frame)
    or ``arrays`` (per atom); None if absent. extxyz puts ``energy``/``forces`` in the former
    and other keys (``energy_xtb``) in the latter."""
    results = getattr(atoms.calc, "results", None) or {}
    value = results.get(key)
    if value is None:
        value = (atoms.arrays if per_atom else atoms.info).get(key)
    return None if value is None else np.asarray(value, dtype=float)


def read_ase(path, energy_key: str = "energy", forces_key: str = "forces", index: str = ":") -> list[Frame]:
    """Any file ASE reads. Keys are looked up in calculator results, then info/arrays."""
    import ase.io

    frames = []
    for k, atoms in enumerate(ase.io.read(str(path), index=index)):
        energy = label(atoms, energy_key, per_atom=False)
        if energy is None:
            raise KeyError(f"{path}: frame {k} has no energy under '{energy_key}' (set energy_key)")
        forces = label(atoms, forces_key, per_atom=True)
        if forces is None:
            raise KeyError(f"{path}: frame {k} has no forces under '{forces_key}' (set forces_key)")
        info = {key: value for key, value in atoms.info.items() if isinstance(value, (str, int, float, bool))}
        frames.append(
            Frame(
                numbers=np.asarray(atoms.numbers, int),
                positions=np.asarray(atoms.positions, float),
                energy=float(energy),
                forces=np.asarray(forces, float).reshape(-1, 3),
                cell=np.asarray(atoms.cell.array, float),
                pbc=np.asarray(atoms.pbc, bool),
                info=info,
            )
        )
    return frames


def read_rmd17(path, indices: Sequence[int] | None = None) -> list[Frame]:
    """An rMD17 .npz (kcal/mol, kcal/mol/Å) converted to eV and eV/Å."""
    data = np.load(path)
    numbers = np.asarray(data["nuclear_charges"], int)
    energies = np.asarray(data["energies"], float) * KCAL_PER_MOL
    forces = np.asarray(data["forces"], float) * KCAL_PER_MOL
    coords = np.asarray(data["coords"], float)
    indices = range(len(energies)) if indices is None else indices
    name = Path(path).stem
    return [Frame(numbers.copy(), coords[i], float(energies[i]), forces[i], info={"source": name, "index": int(i)}) for i in indices]


def read_hdf5(
    path,
    energy_key: str = "wb97x_dz.energy",
    forces_key: str | None = "wb97x_dz.forces",
    positions_key: str = "coordinates",
    numbers_key: str = "atomic_numbers",
    energy_unit: str = "hartree",
    length_unit: str = "angstrom",
    forces_are_gradients: bool = False,
) -> list[Frame]:
    """ANI-1x / SPICE-style HDF5: every group holding `numbers_key` is one molecule.

    ANI-1x: coordinates in Å, energies in Hartree, forces in Hartree/Å (the defaults).
    SPICE: ``positions_key="conformations"``, ``length_unit="bohr"``,
    ``energy_key="dft_total_energy"``, ``forces_key="dft_total_gradient"``,
    ``forces_are_gradients=True``. Conformers whose energy is NaN are skipped.
    """
    try:
        import h5py
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading HDF5 training data needs h5py: pip install h5py (or pip install 'mace-ase[train]')"
        ) from None
    energy_scale = {"hartree": HARTREE, "ev": 1.0, "kcal/mol": KCAL_PER_MOL}[energy_unit.lower()]
    length_scale = {"angstrom": 1.0, "bohr": BOHR}[length_unit.lower()]
    force_scale = energy_scale / length_scale * (-1.0 if forces_are_gradients else 1.0)
    frames: list[Frame] = []
    with h5py.File(path, "r") as f:
        groups = []
        f.visititems(lambda name, obj: groups.append(name) if isinstance(obj, h5py.Group) and numbers_key in obj else None)
        for name in sorted(groups):
            g = f[name]
            numbers = np.asarray(g[numbers_key], int).reshape(-1)
            coords = np.asarray(g[positions_key], float) * length_scale
            energies = np.asarray(g[energy_key], float).reshape(-1) * energy_scale
            forces = np.asarray(g[forces_key], float) * force_scale if forces_key else np.full(coords.shape, np.nan)
            for k in range(len(energies)):
                if not math.isfinite(energies[k]):
                    continue
                frames.append(Frame(numbers.copy(), coords[k], float(energies[k]), forces[k].reshape(-1, 3),
                                    info={"group": name, "conformer": k}))
    return frames


def read_frames(path, energy_key: str | None = None, forces_key: str | None = None, **hdf5_options) -> list[Frame]:
    """Choose the reader by file suffix: .npz (rMD17), .h5/.hdf5, else ASE."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        return read_rmd17(path)
    if hdf5_options and suffix not in (".h5", ".hdf5"):
        raise ValueError(f"hdf5_options given for {path}, which is not an HDF5 file")
    if suffix in (".h5", ".hdf5"):
        keys = {}
        if energy_key:
            keys["energy_key"] = energy_key
        if forces_key:
            keys["forces_key"] = forces_key
        return read_hdf5(path, **keys, **hdf5_options)
    return read_ase(path, energy_key or "energy", forces_key or "forces")


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


def split_frames(
    frames: Sequence[Frame], valid_fraction: float = 0.1, seed: int = 0, group_key: str | None = None
) -> tuple[list[Frame], list[Frame]]:
    """(train, validation), a permutation fixed by `seed`.

    With `group_key` (e.g. ``mol_name``) whole groups go to one side, so the
    validation molecules are never seen in training.
    """
    rng = np.random.default_rng(seed)
    if group_key is None:
        order = rng.permutation(len(frames))
        n_valid = int(round(valid_fraction * len(frames)))
        valid = set(order[:n_valid].tolist())
    else:
        missing = [k for k, f in enumerate(frames) if group_key not in f.info]
        if missing:
            raise KeyError(f"frame {missing[0]} has no '{group_key}' to split by")
        groups = sorted({str(f.info[group_key]) for f in frames})
        picked = rng.permutation(len(groups))[: max(1, int(round(valid_fraction * len(groups))))]
        chosen = {groups[i] for i in picked}
        valid = {k for k, f in enumerate(frames) if str(f.info[group_key]) in chosen}
    train = [f for k, f in enumerate(frames) if k not in valid]
    validation = [f for k, f in enumerate(frames) if k in valid]
    return train, validation
