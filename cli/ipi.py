"""`mace-ase ipi`: a force client for an i-PI server (PIMD, replica methods; one client per core or node)."""

from __future__ import annotations

import click

from .common import existing_file, input_options, make_calculator, model_options, read_structure


@click.command("ipi")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="i-PI's inet socket (<ffsocket mode='inet'>), e.g. localhost:31415.")
@click.option("--unix", "unix", default=None, metavar="NAME",
              help="i-PI's UNIX socket name (<ffsocket mode='unix'><address>NAME</address>): /tmp/ipi_NAME.")
@click.option("--structure", "-s", type=existing_file(), required=True,
              help="The system i-PI runs (any ASE format; an extended XYZ with its Lattice is periodic): "
                   "species and periodicity; i-PI sends the positions and cell.")
@input_options(default_index="0")
@click.option("--pbc/--no-pbc", default=None,
              help="Periodic or not (default: as in --structure).")
@click.option("--wait", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for the server to accept the connection at the start.")
@click.option("--reconnect", type=click.FloatRange(min=0), default=60.0, show_default=True,
              help="Seconds to wait for i-PI to come back after a dropped connection (0: exit at once).")
@model_options
def ipi(address, unix, structure, index, file_format, pbc, wait, reconnect, model, dtype, accept_license):
    """Serve MACE energies, forces and virial to an i-PI server until it ends the run.

    \b
    i-PI:    i-pi input.xml &
    clients: mace-ase ipi --unix water --structure init.extxyz --dtype float64 &   (one per bead group)
    The client exits with status 0 when i-PI ends the run.
    """
    from mace_ase.ipi import parse_address, serve

    if (address is None) == (unix is None):
        raise click.UsageError("give exactly one of --address HOST:PORT or --unix NAME")
    host, port = parse_address(address) if address is not None else ("localhost", None)
    atoms = read_structure(structure, index, file_format)
    if pbc is not None:
        atoms.pbc = pbc
    calc = make_calculator(model, dtype, accept_license)
    atoms.calc = calc
    atoms.get_potential_energy()  # compile, and refuse unknown elements, before i-PI's first request
    serve(atoms, calc, host=host, port=port, unixsocket=unix, wait=wait, reconnect=reconnect)
