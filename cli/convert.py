"""`mace-ase convert`: any model mace-ase reads -> a mace-ase archive that loads without conversion."""

from __future__ import annotations

import click

from .common import existing_file, new_file


@click.command()
@click.argument("model_file", metavar="MODEL", type=existing_file())
@click.option("--output", "-o", type=new_file(), required=True, help="The archive to write (.zip).")
@click.option("--head", default=None, metavar="NAME",
              help="Which head of a multi-head model to keep (default: the first one that is not 'pt_head').")
@click.option("--accept-license", is_flag=True, help="Accept the model's licence for this run.")
def convert(model_file, output, head, accept_license):
    """Convert MODEL (a mace-torch .model file, an mlip or mace-ase archive) into a mace-ase archive.

    \b
    The archive keeps the model's licence metadata. Models that mlip v1 can express are written
    as mlip v1 archives (mlip loads them too); others (mace-torch physics: its activation
    constant, Bessel buffers, density normalisation, ZBL ...) in mace-ase's own format.
      mace-ase convert MACE-OFF23_medium.model -o off23-medium.zip
    """
    from mace_ase.archive import save_archive
    from mace_ase.formats import detect
    from mace_ase.weights import derived_metadata, load_model

    source_format = detect(model_file)
    model = load_model(model_file, accept_license=accept_license, head=head)
    model.metadata.update(derived_metadata(model))  # a restricted source licence is kept
    model.metadata.setdefault("converted_from_file", model_file.name)
    written = save_archive(model, output)
    config = model.config
    kept = model.metadata.get("head")
    click.echo(f"read     {model_file} ({source_format.replace('_', ' ')}{f', head {kept!r}' if kept else ''})")
    click.echo(f"model    {len(config.atomic_numbers)} elements, {config.num_layers} layers, "
               f"{config.num_channels} channels, l_max {config.l_max}, L {config.node_symmetry}, "
               f"correlation {config.correlation}, cutoff {config.cutoff:g} Å")
    click.echo(f"licence  {model.metadata.get('license') or 'not stated in the file'}")
    click.echo(f"wrote    {written}")
