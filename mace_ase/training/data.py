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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import MissingLabelError, TrainingDataError
from .hdf5 import BOHR, HARTREE, KCAL_PER_MOL  # noqa: F401  (units, re-exported)


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
            raise MissingLabelError(f"{path}: frame {k} has no energy under '{energy_key}' (set energy_key)")
        forces = label(atoms, forces_key, per_atom=True)
        if forces is None:
            raise MissingLabelError(f"{path}: frame {k} has no forces under '{forces_key}' (set forces_key)")
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


def read_hdf5(path, energy_key: str | None = None, forces_key: str | None = None, **options) -> list[Frame]:
    """Every frame of an HDF5 file, in memory (see :mod:`mace_ase.training.hdf5` for streaming).

    Layouts: SPICE/ANI (one group per molecule, conformers stacked; defaults are ANI-1x's
    keys in Hartree and Å; SPICE: ``positions_key="conformations"``, ``length_unit="bohr"``,
    ``energy_key="dft_total_energy"``, ``forces_key="dft_total_gradient"``,
    ``forces_are_gradients=True``) and mlip's (SPICE2-curated: one group per structure,
    eV and Å). None keys take the layout's defaults. Conformers whose energy is NaN are
    skipped; NaN forces, wrong shapes or missing keys are named errors.
    """
    from .hdf5 import Hdf5Options, read_all

    frames, _ = read_all(path, Hdf5Options.make(energy_key, forces_key, **options))
    check_frames(frames, path)
    return frames


def read_frames(path, energy_key: str | None = None, forces_key: str | None = None, **hdf5_options) -> list[Frame]:
    """Choose the reader by file suffix: .npz (rMD17), .h5/.hdf5, else ASE."""
    suffix = Path(path).suffix.lower()
    if suffix == ".npz":
        frames = read_rmd17(path)
        check_frames(frames, path)
        return frames
    if hdf5_options and suffix not in (".h5", ".hdf5"):
        raise ValueError(f"hdf5_options given for {path}, which is not an HDF5 file")
    if suffix in (".h5", ".hdf5"):
        return read_hdf5(path, energy_key, forces_key, **hdf5_options)
    frames = read_ase(path, energy_key or "energy", forces_key or "forces")
    check_frames(frames, path)
    return frames


def check_frames(frames: Sequence[Frame], source) -> None:
    """Name the first frame that cannot train a model: forces of the wrong shape, NaN or inf labels or positions."""
    for k, f in enumerate(frames):
        where = f"{source}: frame {k}" + (f" ({', '.join(f'{a}={b}' for a, b in f.info.items() if a in ('group', 'conformer', 'mol_name', 'index'))})" if f.info else "")
        n = len(f.numbers)
        if np.shape(f.positions) != (n, 3):
            raise TrainingDataError(f"{where}: {n} atoms but positions of shape {np.shape(f.positions)}")
        if np.shape(f.forces) != (n, 3):
            raise TrainingDataError(f"{where}: {n} atoms but forces of shape {np.shape(f.forces)} (expected ({n}, 3))")
        if not np.isfinite(f.energy):
            raise TrainingDataError(f"{where}: the energy is {f.energy}")
        if not np.all(np.isfinite(f.forces)):
            raise TrainingDataError(f"{where}: {int(np.sum(~np.isfinite(f.forces)))} force component(s) are NaN or infinite")
        if not np.all(np.isfinite(f.positions)):
            raise TrainingDataError(f"{where}: NaN or infinite positions")


# --------------------------------------------------------------------------
# Splits
# --------------------------------------------------------------------------


def split_indices(num_frames: int, valid_fraction: float = 0.1, seed: int = 0, groups: Sequence | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) frame indices, a permutation fixed by `seed`, each in file order.

    With `groups` (one label per frame, e.g. the molecule) whole groups go to one side.
    """
    rng = np.random.default_rng(seed)
    if groups is None:
        order = rng.permutation(num_frames)
        n_valid = int(round(valid_fraction * num_frames))
        is_valid = np.zeros(num_frames, bool)
        is_valid[order[:n_valid]] = True
    else:
        labels = np.asarray([str(g) for g in groups])
        names = sorted(set(labels.tolist()))
        picked = rng.permutation(len(names))[: max(1, int(round(valid_fraction * len(names))))]
        is_valid = np.isin(labels, [names[i] for i in picked])
    return np.flatnonzero(~is_valid), np.flatnonzero(is_valid)


def split_frames(
    frames: Sequence[Frame], valid_fraction: float = 0.1, seed: int = 0, group_key: str | None = None
) -> tuple[list[Frame], list[Frame]]:
    """(train, validation), a permutation fixed by `seed`.

    With `group_key` (e.g. ``mol_name``) whole groups go to one side, so the
    validation molecules are never seen in training.
    """
    groups = None
    if group_key is not None:
        missing = [k for k, f in enumerate(frames) if group_key not in f.info]
        if missing:
            raise MissingLabelError(f"frame {missing[0]} has no '{group_key}' to split by")
        groups = [f.info[group_key] for f in frames]
    train, valid = split_indices(len(frames), valid_fraction, seed, groups)
    return [frames[k] for k in train], [frames[k] for k in valid]
