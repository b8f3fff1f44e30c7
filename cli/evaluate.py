"""`mace-ase eval`: energies and forces of every frame, and errors against reference labels."""

from __future__ import annotations

import click
import numpy as np

from .common import (
    check_output_format,
    default_output,
    existing_file,
    input_options,
    make_calculator,
    model_options,
    new_file,
    progressbar,
    read_frames,
    write_frames,
)


def predict(calc, frames, batch_size: int) -> list[dict]:
    """calc.calculate_batch over chunks of frames, with a progress bar."""
    results = []
    with progressbar(len(frames), "Evaluating") as bar:
        for start in range(0, len(frames), batch_size):
            chunk = frames[start:start + batch_size]
            results += calc.calculate_batch(chunk, properties=("energy", "forces"))
            bar.update(len(chunk))
    return results


def output_frames(frames, results, prefix: str, file_format: str) -> list:
    """The frames to write: as read, plus the predictions where `file_format` can hold them.

    Extended XYZ keeps everything: the labels stay as read and the predictions go under
    <prefix>energy (info) and <prefix>forces (per atom). Other formats (ASE's .traj) keep no
    free per-atom arrays: there the predictions are each frame's energy and forces (its
    calculator results), and <prefix>energy is in info too.
    """
    from ase.calculators.singlepoint import SinglePointCalculator

    for atoms, result in zip(frames, results):
        atoms.info[f"{prefix}energy"] = result["energy"]
        atoms.arrays[f"{prefix}forces"] = result["forces"]
    if file_format == "extxyz":
        return frames
    written = []
    for atoms, result in zip(frames, results):
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=result["energy"], forces=result["forces"])
        written.append(copy)
    return written


def error_metrics(frames, results, energy_key: str, forces_key: str) -> dict:
    """MAE and RMSE of energy (total, per atom) and force components over the labelled frames."""
    from mace_ase.training.data import label  # the training reader's lookup: one rule for labels

    energy, per_atom, forces = [], [], []
    for atoms, result in zip(frames, results):
        ref_energy = label(atoms, energy_key, per_atom=False)
        if ref_energy is not None:
            energy.append(result["energy"] - float(ref_energy))
            per_atom.append(energy[-1] / len(atoms))
        ref_forces = label(atoms, forces_key, per_atom=True)
        if ref_forces is not None:
            forces.append((result["forces"] - ref_forces.reshape(-1, 3)).ravel())
    metrics = {"frames_with_energy": len(energy), "frames_with_forces": len(forces)}
    for name, errors in (("energy", energy), ("energy_per_atom", per_atom),
                         ("forces", np.concatenate(forces) if forces else [])):
        errors = np.asarray(errors, dtype=float)
        if errors.size:
            metrics[name] = {"mae": float(np.abs(errors).mean()), "rmse": float(np.sqrt((errors**2).mean()))}
    return metrics


def print_metrics(metrics: dict, energy_key: str, forces_key: str) -> None:
    rows = (("energy", "meV", energy_key), ("energy_per_atom", "meV/atom", energy_key),
            ("forces", "meV/Å", forces_key))
    printed = False
    for name, unit, key in rows:
        if name in metrics:
            m = metrics[name]
            click.echo(f"{name:<16} MAE {1e3 * m['mae']:12.6g} {unit:<9} RMSE {1e3 * m['rmse']:12.6g} {unit:<9} (vs '{key}')")
            printed = True
    if not printed:
        click.echo(f"no reference labels ('{energy_key}' / '{forces_key}'): no errors to report")


@click.command("eval")
@click.argument("data", type=existing_file())
@input_options(default_index=":")
@model_options
@click.option("-o", "--output", type=new_file(), default=None,
              help="Predictions, in the format of the file name (.xyz: extended XYZ with labels and predictions; "
                   ".traj: predictions as each frame's energy and forces). Default: <stem>-eval.xyz in the current folder.")
@click.option("--energy-key", default="energy", show_default=True,
              help="Reference energy: a key of the frame's info, or of its calculator results.")
@click.option("--forces-key", default="forces", show_default=True,
              help="Reference forces: a per-atom array of the frame, or its calculator's forces.")
@click.option("--prefix", default="MACE_", show_default=True,
              help="Predictions are written as <prefix>energy (info) and <prefix>forces (per atom).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Frames evaluated together in one compiled call.")
def evaluate(data, index, file_format, model, dtype, accept_license, output, energy_key, forces_key, prefix, batch_size):
    """Energies and forces of every frame of DATA; MAE/RMSE where the frames have labels.

    The output keeps each frame as read (reference labels included) and adds the
    predictions under --prefix keys, as mace-torch's eval_configs does.
    """
    frames = read_frames(data, index, file_format)
    output = output or default_output(data, "-eval.xyz")
    output_format = check_output_format(output, len(frames))
    calc = make_calculator(model, dtype, accept_license)
    results = predict(calc, frames, batch_size)
    write_frames(output, output_frames(frames, results, prefix, output_format), file_format=output_format)

    metrics = error_metrics(frames, results, energy_key, forces_key)
    atoms_total = sum(len(a) for a in frames)
    click.echo(f"frames           {len(frames)} ({atoms_total} atoms; {metrics['frames_with_energy']} with "
               f"reference energy, {metrics['frames_with_forces']} with reference forces)")
    print_metrics(metrics, energy_key, forces_key)
    click.echo(f"written          {output}")
