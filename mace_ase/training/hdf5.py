"""HDF5 training data, frame by frame: the SPICE/ANI layout and mlip's (SPICE2-curated) layout.

Two layouts, told apart by their first group (or named with ``layout=``):

* ``"molecules"`` (ANI-1x, SPICE): one group per molecule, anywhere in the file, holding
  ``numbers_key`` [n] and, per conformer, ``positions_key`` [K, n, 3], ``energy_key`` [K]
  and ``forces_key`` [K, n, 3] (or gradients). A frame is (group, conformer). Units are
  options: ANI-1x is Hartree and Å, SPICE Hartree, Bohr and gradients.
* ``"structures"`` (mlip's ``Hdf5Reader``, the files of InstaDeep's SPICE2-curated): one
  top-level group per structure holding ``elements`` [n], ``positions`` [n, 3] and
  ``forces`` [n, 3], with the energy as the group attribute ``energy``. mlip converts
  nothing, so these are eV, Å and eV/Å.

:class:`Hdf5Frames` lists the frames once (:meth:`Hdf5Frames.scan`, reading every group
in file order) and then reads any frame by index: a data set larger than memory is
streamed from disk. Conformers whose energy is NaN (failed calculations in SPICE) are left
out by the scan and counted. h5py is imported only here.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import MissingLabelError, TrainingDataError

HARTREE = 27.211386245988  # eV (CODATA 2018, as ase.units.Hartree)
BOHR = 0.529177210903  # Å
KCAL_PER_MOL = 0.0433641  # eV

ENERGY_UNITS = {"hartree": HARTREE, "ev": 1.0, "kcal/mol": KCAL_PER_MOL}
LENGTH_UNITS = {"angstrom": 1.0, "bohr": BOHR}

CONFORMERS_PER_READ = 64

MOLECULE_DEFAULTS = dict(energy_key="wb97x_dz.energy", forces_key="wb97x_dz.forces", positions_key="coordinates",
                         numbers_key="atomic_numbers", energy_unit="hartree", length_unit="angstrom")
STRUCTURE_DEFAULTS = dict(energy_key="energy", forces_key="forces", positions_key="positions",
                          numbers_key="elements", energy_unit="ev", length_unit="angstrom")


def h5py():
    try:
        import h5py as module
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading HDF5 training data needs h5py: pip install h5py (or pip install 'mace-ase[train]')") from None
    return module


@dataclass(frozen=True)
class Hdf5Options:
    """How to read one HDF5 file; None fields take the layout's defaults (see the module docstring)."""

    layout: str = "auto"  # auto | molecules | structures
    energy_key: str | None = None
    forces_key: str | None = None
    positions_key: str | None = None
    numbers_key: str | None = None
    energy_unit: str | None = None
    length_unit: str | None = None
    forces_are_gradients: bool = False

    @classmethod
    def make(cls, energy_key: str | None = None, forces_key: str | None = None, **options) -> "Hdf5Options":
        """From reader arguments: None keys take the layout's defaults; unknown options are named."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TrainingDataError(f"unknown HDF5 option(s) {', '.join(unknown)}; known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**{**options, "energy_key": energy_key or options.get("energy_key"), "forces_key": forces_key or options.get("forces_key")})

    def resolved(self, layout: str) -> "Hdf5Options":
        defaults = MOLECULE_DEFAULTS if layout == "molecules" else STRUCTURE_DEFAULTS
        filled = {k: getattr(self, k) if getattr(self, k) is not None else v for k, v in defaults.items()}
        for key, table in (("energy_unit", ENERGY_UNITS), ("length_unit", LENGTH_UNITS)):
            if filled[key].lower() not in table:
                raise TrainingDataError(f"unknown {key} {filled[key]!r}; choose one of {', '.join(table)}")
        return replace(self, layout=layout, **filled)

    @property
    def energy_scale(self) -> float:
        return ENERGY_UNITS[self.energy_unit.lower()]

    @property
    def force_scale(self) -> float:
        sign = -1.0 if self.forces_are_gradients else 1.0
        return sign * self.energy_scale / LENGTH_UNITS[self.length_unit.lower()]

    @property
    def length_scale(self) -> float:
        return LENGTH_UNITS[self.length_unit.lower()]


def detect_layout(handle, options: Hdf5Options, path) -> str:
    if options.layout != "auto":
        if options.layout not in ("molecules", "structures"):
            raise TrainingDataError(f"unknown HDF5 layout {options.layout!r}: choose auto, molecules or structures")
        return options.layout
    module = h5py()
    for name in handle:
        item = handle[name]
        if not isinstance(item, module.Group):
            continue
        if "elements" in item and "positions" in item:
            return "structures"
        if (options.numbers_key or MOLECULE_DEFAULTS["numbers_key"]) in item:
            return "molecules"
        # A molecule group may sit one level down (ANI files group by formula size).
        for child in item.values():
            if isinstance(child, module.Group) and (options.numbers_key or MOLECULE_DEFAULTS["numbers_key"]) in child:
                return "molecules"
    raise TrainingDataError(
        f"{path}: no group with 'elements' + 'positions' (mlip / SPICE2-curated layout) or "
        f"'{options.numbers_key or MOLECULE_DEFAULTS['numbers_key']}' (SPICE / ANI layout); set hdf5_options numbers_key/positions_key"
    )


class Hdf5Frames:
    """The frames of one HDF5 file: listed once, then read one at a time by index.

    ``groups[group_of[i]]`` and ``conformer[i]`` locate frame i. Every thread that reads
    gets its own file handle.
    """

    def __init__(self, path, options: Hdf5Options, groups: np.ndarray, group_of: np.ndarray, conformer: np.ndarray):
        self.path = Path(path)
        self.options = options
        self.groups = groups  # [G] bytes
        self.group_of = group_of  # [F] int32
        self.conformer = conformer  # [F] int32
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.group_of)

    def handle(self):
        file = getattr(self._local, "file", None)
        if file is None:
            # A small chunk cache per handle: frames are read once per epoch, in random order.
            file = h5py().File(self.path, "r", rdcc_nbytes=256 * 1024)
            self._local.file = file
        return file

    def __getitem__(self, i: int):
        return self.read(int(i))

    def read(self, i: int):
        from .data import Frame

        o = self.options
        name = self.groups[self.group_of[i]].decode()
        group = self.handle()[name]
        if o.layout == "structures":
            numbers = np.asarray(group[o.numbers_key][()], int).reshape(-1)
            positions = np.asarray(group[o.positions_key][()], float)
            energy = float(group.attrs[o.energy_key])
            forces = np.asarray(group[o.forces_key][()], float)
            info = {"group": name}
        else:
            k = int(self.conformer[i])
            numbers = np.asarray(group[o.numbers_key][()], int).reshape(-1)
            positions = np.asarray(group[o.positions_key][k], float)
            energy = float(np.asarray(group[o.energy_key][k]))
            forces = np.asarray(group[o.forces_key][k], float)
            info = {"group": name, "conformer": k}
        return Frame(numbers, positions * o.length_scale, energy * o.energy_scale,
                     forces.reshape(-1, 3) * o.force_scale, info=info)

    @classmethod
    def scan(cls, path, options: Hdf5Options) -> Iterator:
        """Yield (group index, group name, conformer, Frame) for every frame in file order.

        The first item is the options resolved for the file's layout. Reads each group once,
        at most 64 conformers at a time, checks keys and shapes, skips NaN energies. The
        index of the frames it yields is the caller's to keep (see :func:`.stream.build_index`).
        """
        from .data import Frame

        with h5py().File(path, "r") as handle:
            layout = detect_layout(handle, options, path)
            o = options.resolved(layout)
            yield o
            names = _group_names(handle, o)
            if not names:
                raise TrainingDataError(f"{path}: no {layout} groups found")
            for g, name in enumerate(names):
                group = handle[name]
                for key in (o.positions_key, o.forces_key, o.numbers_key):
                    if key not in group:
                        raise MissingLabelError(f"{path}: group {name!r} has no data set {key!r} (set hdf5_options / forces_key)")
                numbers = np.asarray(group[o.numbers_key][()], int).reshape(-1)
                n = len(numbers)
                if layout == "structures":
                    if o.energy_key not in group.attrs:
                        raise MissingLabelError(f"{path}: group {name!r} has no attribute {o.energy_key!r} (set energy_key)")
                    shapes = (group[o.positions_key].shape, group[o.forces_key].shape)
                    if shapes != ((n, 3), (n, 3)):
                        raise TrainingDataError(f"{path}: group {name!r}: {n} atoms, but positions of shape {shapes[0]} "
                                                f"and forces of shape {shapes[1]} (expected ({n}, 3))")
                    energy = float(group.attrs[o.energy_key])
                    if math.isfinite(energy):
                        yield g, name, 0, Frame(numbers, np.asarray(group[o.positions_key][()], float) * o.length_scale,
                                                energy * o.energy_scale, np.asarray(group[o.forces_key][()], float) * o.force_scale,
                                                info={"group": name})
                    continue
                if o.energy_key not in group:
                    raise MissingLabelError(f"{path}: group {name!r} has no data set {o.energy_key!r} (set energy_key)")
                energies = np.asarray(group[o.energy_key][()], float).reshape(-1)
                k_all = len(energies)
                shapes = (group[o.positions_key].shape, group[o.forces_key].shape)
                if shapes != ((k_all, n, 3), (k_all, n, 3)):
                    raise TrainingDataError(f"{path}: group {name!r}: {n} atoms and {k_all} energies, but positions of shape "
                                            f"{shapes[0]} and forces of shape {shapes[1]} (expected ({k_all}, {n}, 3))")
                for first in range(0, k_all, CONFORMERS_PER_READ):  # a group of many conformers is never read whole
                    last = min(first + CONFORMERS_PER_READ, k_all)
                    positions = np.asarray(group[o.positions_key][first:last], float)
                    forces = np.asarray(group[o.forces_key][first:last], float)
                    for k in range(first, last):
                        if not math.isfinite(energies[k]):
                            continue  # a failed calculation (SPICE marks them NaN): not a frame
                        yield g, name, k, Frame(numbers.copy(), positions[k - first] * o.length_scale, float(energies[k]) * o.energy_scale,
                                                forces[k - first] * o.force_scale, info={"group": name, "conformer": k})


def _group_names(handle, o: Hdf5Options) -> list[str]:
    module = h5py()
    if o.layout == "structures":  # mlip reads the top level only
        return [name for name in handle if isinstance(handle[name], module.Group)]
    names: list[str] = []
    handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, module.Group) and o.numbers_key in obj else None)
    return sorted(names)


def read_all(path, options: Hdf5Options) -> tuple[list, Hdf5Options]:
    """Every frame of the file in memory (small files), and the options resolved for its layout."""
    scan = Hdf5Frames.scan(path, options)
    resolved = next(scan)
    return [frame for _, _, _, frame in scan], resolved
