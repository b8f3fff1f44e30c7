"""`mace-ase relax`: geometry (and optionally cell) optimisation."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from .common import (
    FrameWriter,
    check_output_format,
    default_output,
    existing_file,
    frozen,
    input_options,
    make_calculator,
    model_options,
    new_file,
    progressbar,
    read_structure,
    write_frames,
)

OPTIMIZERS = ("BFGS", "LBFGS", "FIRE")
EXIT_NOT_CONVERGED = 3


def _optimizer(name: str, target):
    from ase import optimize

    return getattr(optimize, name.upper())(target, logfile=None)


def _check_cell(atoms, path: Path) -> None:
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise click.ClickException(
            f"--cell relaxes a periodic cell, but {path} has pbc={atoms.pbc.tolist()} "
            f"and a cell of rank {atoms.cell.rank}; drop --cell for a molecule"
        )


def _max_force(forces) -> float:
    return float(np.sqrt((np.asarray(forces) ** 2).sum(axis=1)).max())


def run_relaxation(atoms, *, fmax, steps, optimizer, cell, trajectory):
    """Optimise in place; returns (converged, number of steps)."""
    target = atoms
    if cell:
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms)
    opt = _optimizer(optimizer, target)
    writer = FrameWriter(trajectory) if trajectory else None
    converged = False
    try:
        with progressbar(steps, f"{optimizer} (fmax {fmax})", show=lambda f: f and f"fmax {f:.4f}") as bar:
            for converged in opt.irun(fmax=fmax, steps=steps):
                if writer:
                    writer.write(atoms)
                if opt.nsteps:
                    bar.update(1, _max_force(target.get_forces()))
    finally:
        if writer:
            writer.close()
    return bool(converged), opt.nsteps


@click.command()
@click.argument("structure", type=existing_file())
@input_options(default_index="-1")
@click.option("--fmax", default=0.05, show_default=True, type=click.FloatRange(min=0, min_open=True),
              help="Converged when every atomic force (and, with --cell, the scaled stress) is below this, eV/Å.")
@click.option("--steps", default=500, show_default=True, type=click.IntRange(min=0), help="Most optimiser steps.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS, case_sensitive=False), default="BFGS", show_default=True)
@click.option("--cell", is_flag=True, help="Relax the cell too (ase.filters.FrechetCellFilter); periodic input only.")
@model_options
@click.option("-o", "--output", type=new_file(), default=None,
              help="Relaxed structure with energy and forces. Default: <stem>-relaxed.xyz in the current folder.")
@click.option("--trajectory", type=new_file(), default=None, help="Write every step here (.traj or .xyz).")
def relax(structure, index, file_format, fmax, steps, optimizer, cell, model, dtype, accept_license, output, trajectory):
    """Relax the atoms of STRUCTURE (any ASE-readable file; the last frame by default).

    Prints the final energy, the largest force, the number of steps and whether it
    converged. The relaxed structure is written either way; the exit status is 3
    when the optimiser did not converge within --steps.
    """
    atoms = read_structure(structure, index, file_format)
    if cell:
        _check_cell(atoms, structure)
    output = output or default_output(structure, "-relaxed.xyz")
    check_output_format(output)
    atoms.calc = make_calculator(model, dtype, accept_license)

    converged, done = run_relaxation(
        atoms, fmax=fmax, steps=steps, optimizer=optimizer, cell=cell, trajectory=trajectory
    )
    result = frozen(atoms)
    result.info.update(relax_converged=converged, relax_steps=done, relax_fmax=fmax)
    write_frames(output, result)

    click.echo(f"energy     {atoms.get_potential_energy():.6f} eV")
    click.echo(f"max force  {_max_force(atoms.get_forces()):.5f} eV/Å")
    if cell:
        from ase.units import GPa

        click.echo(f"max stress {np.abs(atoms.get_stress()).max() / GPa:.5f} GPa")
    click.echo(f"steps      {done}")
    click.echo(f"converged  {'yes' if converged else 'no'} (fmax {fmax} eV/Å, {optimizer})")
    click.echo(f"written    {output}")
    if not converged:
        click.echo(f"Warning: not converged within {steps} steps; the last structure was written", err=True)
        raise click.exceptions.Exit(EXIT_NOT_CONVERGED)
