"""`mace-ase train`: train or fine-tune a MACE model (mace_ase.training).

Options come from a JSON or TOML config file (keys = mace_ase.training.TrainSettings
fields), then from flags, then from repeated ``--set name=value``; later wins.

    mace-ase train --config weights/train-default.json
    mace-ase train --train-file data.xyz --energy-key energy_xtb --forces-key forces_xtb --epochs 100
    mace-ase train --config run.toml --resume            # continue after a crash or a budget stop
    mace-ase train --init-from mace-ase-small-xtb --train-file mine.xyz       # fine-tune (a name or a file)

Data parallel: every device of ``jax.devices()`` trains (``--devices N`` picks the first N).
Several hosts: start one process per host with the same options plus ``--coordinator
HOST:PORT --num-processes N --process-id I`` (or ``--distributed`` under SLURM and the other
cluster managers JAX detects); process 0 writes the outputs.

On glibc Linux the command restarts itself once, before importing JAX, with glibc's
malloc backed by huge pages (mace_ase.heap.TRAINING_TUNABLES): the card's step on 2 CPU
cores is 1.6x faster. A ``glibc.malloc.*`` tunable of your own in GLIBC_TUNABLES is kept as it is.
"""

from __future__ import annotations

import json
import os
import sys

import click

FLAGS = {
    "train_file": (str, "Training data: extxyz/any ASE format, rMD17 .npz, or ANI/SPICE-style .h5."),
    "valid_file": (str, "Validation data (default: a seeded split of the training data)."),
    "energy_key": (str, "Energy key (ASE: 'energy'; e.g. energy_xtb; HDF5: wb97x_dz.energy)."),
    "forces_key": (str, "Forces key (ASE: 'forces'; e.g. forces_xtb)."),
    "valid_fraction": (float, "Fraction of frames (or groups) held out for validation."),
    "group_key": (str, "Split whole groups by this info key, e.g. mol_name."),
    "seed": (int, "Seed of the split, the initial parameters and the shuffling."),
    "init_from": (str, "Fine-tune this model: a registered name or a model file (fixes the architecture and statistics)."),
    "num_channels": (int, "Channels."),
    "l_max": (int, "Highest spherical-harmonic degree."),
    "correlation": (int, "Correlation order."),
    "num_layers": (int, "Interaction layers."),
    "cutoff": (float, "Cutoff (Å)."),
    "atomic_energies": (str, "E0 per element: average (least squares), isolated, zero."),
    "isolated_atoms_file": (str, "Isolated-atom energies for --atomic-energies isolated."),
    "scaling": (str, "Energy scaling: none (mlip) or rms_forces."),
    "batch_size": (int, "Graphs per batch."),
    "epochs": (int, "Epochs."),
    "swap_epoch": (int, "Epoch at which the energy/force loss weights are swapped."),
    "peak_learning_rate": (float, "Peak learning rate."),
    "stream": (bool, "Read HDF5 frames from disk by index, for data larger than memory."),
    "devices": (int, "Train on the first N devices of jax.devices() (default: all)."),
    "micro_batches_per_device": (int, "Micro-batches per device and step, gradients summed (less memory per device)."),
    "checkpoint_every_steps": (int, "Also write the checkpoint every N steps inside an epoch."),
    "max_wall_s": (float, "Wall-clock budget (s): stop after the last epoch that fits, then export."),
    "output_dir": (str, "Run folder: checkpoint.npz, metrics.jsonl, metrics.png, the archive."),
    "archive_name": (str, "File name of the exported archive inside output_dir."),
}


def restart_with_training_tunables(argv: list[str]) -> None:
    """Re-execute this very command line with `TRAINING_TUNABLES` when it is `train` and they are missing.

    glibc reads its tunables only at process start; exec keeps the PID, so launchers (srun,
    mpirun, a batch system's signals) see the same process.
    """
    from mace_ase.heap import training_tunables_missing, with_training_tunables

    command = next((word for word in argv if not word.startswith("-")), None)
    if command != "train" or not training_tunables_missing():
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_training_tunables())


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _progress():
    state = {}

    def update(epoch, k, n, loss):
        if k == 0:
            state["bar"] = click.progressbar(length=n, label=f"epoch {epoch}", show_pos=True, file=click.get_text_stream("stderr"))
            state["bar"].__enter__()
        state["bar"].label = f"epoch {epoch} loss {loss:.4g}"
        state["bar"].update(1)
        if k == n - 1:
            state.pop("bar").__exit__(None, None, None)

    return update


def _options(function):
    for name, (kind, help_text) in reversed(FLAGS.items()):
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:
            function = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, default=None, help=help_text)(function)
        else:
            function = click.option(flag, name, type=kind, default=None, help=help_text)(function)
    return function


def _distributed_options(function):
    options = [
        click.option("--distributed", is_flag=True, envvar="MACE_ASE_DISTRIBUTED",
                     help="Join a multi-process run, with JAX's detection of the cluster (SLURM, Open MPI, ...)."),
        click.option("--coordinator", metavar="HOST:PORT", envvar="MACE_ASE_COORDINATOR",
                     help="Multi-process run: address of process 0's coordinator (env MACE_ASE_COORDINATOR)."),
        click.option("--num-processes", type=int, envvar="MACE_ASE_NUM_PROCESSES",
                     help="Multi-process run: number of processes (env MACE_ASE_NUM_PROCESSES)."),
        click.option("--process-id", type=int, envvar="MACE_ASE_PROCESS_ID",
                     help="Multi-process run: this process's index, 0 .. N-1 (env MACE_ASE_PROCESS_ID)."),
    ]
    for option in reversed(options):
        function = option(function)
    return function


@click.command("train")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), help="JSON or TOML file of training options.")
@_options
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE", help="Any other option, e.g. --set warmup_steps=100 (JSON values).")
@click.option("--resume", is_flag=True, help="Continue from output_dir/checkpoint.npz.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--accept-license", is_flag=True,
              help="Accept the licence of a non-commercial --init-from model for this run (the result keeps that licence).")
@_distributed_options
def train_command(config_file, assignments, resume, quiet, accept_license, distributed, coordinator, num_processes, process_id, **flags):
    """Train (or fine-tune) a MACE model and export it as an archive."""
    multi = distributed or coordinator is not None or num_processes is not None or process_id is not None
    if multi:  # before anything touches JAX's backends
        from mace_ase.training.parallel import initialize_distributed

        initialize_distributed(coordinator, num_processes, process_id)
    from mace_ase.training import TrainSettings, train

    settings = TrainSettings.from_file(config_file) if config_file else TrainSettings()
    values = settings.to_dict()
    values.update({k: v for k, v in flags.items() if v is not None})
    for item in assignments:
        if "=" not in item:
            raise click.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        name, text = item.split("=", 1)
        values[name.strip()] = _parse_value(text)
    try:
        settings = TrainSettings.from_dict(values)
    except ValueError as error:
        raise click.UsageError(str(error)) from None
    if not settings.train_file:
        raise click.UsageError("no training data: give --train-file or train_file in --config")
    import jax

    primary = jax.process_index() == 0
    try:
        summary = train(settings, resume=resume, progress=None if quiet or not primary else _progress(), log=click.echo,
                        accept_license=True if accept_license else None)
    except Exception as error:
        from mace_ase.training.errors import ProcessLostError

        if multi and isinstance(error, ProcessLostError):
            # JAX's distributed runtime cannot shut down once a peer is gone (it would wait, then abort):
            # say what happened and leave at once.
            click.echo(f"Error: {error}", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        raise
    if not primary:
        return
    metrics = summary["metrics"]
    click.echo(
        f"wrote {summary['archive']} after {summary['epochs_completed']} epochs in {summary['wall_s']:.0f} s; "
        f"validation (EMA): energy MAE {metrics.get('valid_energy_mae_meV', float('nan')):.1f} meV "
        f"({metrics.get('valid_energy_per_atom_mae_meV', float('nan')):.2f} meV/atom), "
        f"force MAE {metrics.get('valid_forces_mae_meV_A', float('nan')):.1f} meV/Å"
    )
