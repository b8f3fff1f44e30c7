"""`mace-ase fetch` and `mace-ase info`: the model registry, downloads, licences, the environment."""

from __future__ import annotations

import click


def _acceptance(accepted: bool | None, commercial_use: bool) -> str:
    if commercial_use:
        return "no acceptance needed"
    return "accepted" if accepted else "NOT accepted"


def _licence_line(entry, accepted: bool) -> str:
    use = "commercial use allowed" if entry.commercial_use else "non-commercial"
    return f"{entry.license} ({use}; {_acceptance(accepted, entry.commercial_use)})"


def _entry(name: str):
    from mace_ase import weights
    from mace_ase.errors import ModelNotFoundError

    if name not in weights.REGISTRY:
        known = ", ".join(sorted(weights.REGISTRY)) or "none"
        raise ModelNotFoundError(f"unknown model '{name}'; registered models: {known}")
    return weights.REGISTRY[name]


def _where(entry) -> str:
    if entry.bundled:
        return f"bundled with the package ({entry.filename})"
    if entry.url:
        return entry.url
    pin = f" @ {entry.revision}" if entry.revision else ""
    return f"huggingface.co/{entry.repo_id} {entry.filename}{pin}"


@click.command()
@click.argument("name")
@click.option("--revision", default=None, help="A git revision of the Hugging Face repository (default: the pinned one).")
@click.option("--accept-license", is_flag=True,
              help="Record that you accept this model's licence (in the config folder), so it loads without asking.")
@click.option("--force-download", is_flag=True, help="Download again, replacing the cached copy (a damaged one, say).")
def fetch(name, revision, accept_license, force_download):
    """Download the registered model NAME into its cache (a no-op when cached).

    Hugging Face models go to the Hugging Face cache, the others to the mace-ase cache
    (`mace-ase info` shows both folders).
    """
    from mace_ase import weights

    entry = _entry(name)
    click.echo(f"Fetching {name} ({_where(entry)}) ...", err=True)
    path = weights.fetch_model(name, revision=revision, force_download=force_download)
    if accept_license:
        recorded = weights.accept_license(name)
        click.echo(f"licence accepted, recorded in {recorded}", err=True)
    accepted = weights.license_accepted(name)
    click.echo(f"model    {name}")
    click.echo(f"path     {path}")
    click.echo(f"licence  {_licence_line(entry, accepted)}")
    if not entry.commercial_use:
        click.echo(entry.license_summary, err=True)
    if not accepted and not entry.commercial_use:
        click.echo(
            f"To use it, accept the licence: `mace-ase fetch {name} --accept-license`, "
            f"--accept-license on a command, or MACE_ASE_ACCEPT_LICENSE={name}.", err=True,
        )


def _registry_lines(status: list[dict], default: str | None) -> list[str]:
    from mace_ase import weights

    lines = []
    for row in status:
        mark = " (default)" if row["name"] == default else ""
        where = row.get("path") or ("bundled, but missing from this install" if row.get("bundled") else "not downloaded")
        use = "commercial use allowed" if row.get("commercial_use") else "non-commercial"
        accepted = _acceptance(row.get("license_accepted"), bool(row.get("commercial_use")))
        lines.append(f"  {row['name']}{mark}")
        lines.append(f"      licence  {row['license']} ({use}; {accepted})")
        lines.append(f"      source   {_where(weights.REGISTRY[row['name']])}")
        lines.append(f"      file     {where}")
    return lines


@click.command()
def info():
    """The model registry, cache and config folders, JAX version, devices and precision."""
    import ase
    import jax

    import mace_ase
    from mace_ase import weights

    default = getattr(weights, "DEFAULT_MODEL", None)
    click.echo(f"mace-ase       {mace_ase.__version__}")
    click.echo(f"ASE            {ase.__version__}")
    click.echo(f"JAX            {jax.__version__} (backend {jax.default_backend()})")
    click.echo(f"devices        {', '.join(str(d) for d in jax.devices())}")
    x64 = "on" if jax.config.jax_enable_x64 else "off"
    click.echo(f"precision      float32 by default (--dtype float64 per command; jax_enable_x64 {x64})")
    click.echo(f"HF cache       {weights.hf_cache_dir()}")
    click.echo(f"model cache    {weights.cache_dir() / 'models'} (models not on Hugging Face)")
    click.echo(f"config folder  {weights.config_dir()}")
    click.echo(f"default model  {default or '-'}")
    click.echo("models:")
    for line in _registry_lines(weights.models_status(), default):
        click.echo(line)
