"""Pieces shared by the verbs: model options, reading and writing structures, progress bars.

Heavy imports (JAX through the calculator, ASE's optimisers) happen inside the
functions, so `mace-ase --help` stays fast.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click


def stderr(message: str = "") -> None:
    click.echo(message, err=True)


def one_line(error: BaseException) -> str:
    """An exception as one line: its message with the line breaks folded."""
    text = "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


# ----------------------------------------------------------------- options


def model_options(command):
    """--model, --dtype, --accept-license: which MACE to load and how."""
    options = [
        click.option(
            "--model", "-m", default=None, metavar="NAME|PATH",
            help="A registered model name or a model archive (.zip). Default: the bundled model.",
        ),
        click.option(
            "--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
            help="Precision: float32 is fast; float64 for tight relaxations and finite differences.",
        ),
        click.option(
            "--accept-license", is_flag=True,
            help="Accept the model's licence for this run (see `mace-ase fetch --accept-license` to record it).",
        ),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


def input_options(default_index: str):
    """--index and --format for the input structure file."""

    def decorate(command):
        command = click.option(
            "--format", "file_format", default=None, metavar="FORMAT",
            help="ASE file format of the input (default: guessed from the name and content).",
        )(command)
        return click.option(
            "--index", default=default_index, show_default=True,
            help="Which frame(s) of the input to use, in ASE's index syntax (0, -1, ':', '2:10:2').",
        )(command)

    return decorate


def existing_file():
    return click.Path(exists=True, dir_okay=False, path_type=Path)


def new_file():
    return click.Path(dir_okay=False, writable=True, path_type=Path)


def default_output(input_path: Path, suffix: str) -> Path:
    """<stem><suffix> in the current folder (never next to a possibly read-only input)."""
    return Path(input_path.stem + suffix)


# ---------------------------------------------------------- the calculator


def make_calculator(model: str | None, dtype: str, accept_license: bool):
    from mace_ase.calculator import MaceCalculator

    stderr(f"Loading model {model or '(bundled default)'} ({dtype}) ...")
    # Without the flag pass None, so that MACE_ASE_ACCEPT_LICENSE and recorded acceptances apply.
    return MaceCalculator(model, dtype=dtype, accept_license=True if accept_license else None)


# ------------------------------------------------------- reading / writing


def read_frames(path: Path, index: str = ":", file_format: str | None = None) -> list:
    """The selected frames of any ASE-readable file; unreadable input is one clear error."""
    import ase
    import ase.io

    try:
        frames = ase.io.read(path, index=index, format=file_format)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as error:  # ASE raises many kinds on unknown formats and parse failures
        how = f" as {file_format}" if file_format else ""
        raise click.ClickException(f"cannot read {path}{how}: {one_line(error)}") from None
    if isinstance(frames, ase.Atoms):
        frames = [frames]
    frames = list(frames)
    if not frames:
        raise click.ClickException(f"{path}: no structures selected by --index {index}")
    return frames


def read_structure(path: Path, index: str, file_format: str | None):
    """Exactly one structure (the --index frame)."""
    frames = read_frames(path, index, file_format)
    if len(frames) != 1:
        raise click.ClickException(f"--index {index} selects {len(frames)} frames of {path}; give a single frame")
    return frames[0]


def check_output_format(path: Path, frames: int = 1) -> str:
    """The ASE format of an output name (from its extension); refused before any work is done."""
    import ase.io.formats

    try:
        name = ase.io.formats.filetype(path, read=False)
    except Exception as error:
        raise click.ClickException(f"cannot write {path}: {one_line(error)}; use e.g. .xyz") from None
    io = ase.io.formats.ioformats.get(name)
    if io is None or not io.can_write:
        raise click.ClickException(f"cannot write {path}: ASE has no writer for '{name}'; use e.g. .xyz")
    if frames > 1 and io.single:
        raise click.ClickException(f"cannot write {frames} frames to {path}: format {name} holds one; use .xyz or .traj")
    return name


def write_frames(path: Path, frames, file_format: str | None = None) -> None:
    import ase.io

    try:
        ase.io.write(path, frames, format=file_format)
    except (OSError, click.ClickException):
        raise
    except Exception as error:
        raise click.ClickException(f"cannot write {path}: {one_line(error)}") from None


def frozen(atoms):
    """A copy carrying the current results as a SinglePointCalculator (what gets written)."""
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    keep = ("energy", "free_energy", "forces", "stress")
    results = {key: value for key, value in atoms.calc.results.items() if key in keep}
    copy.calc = SinglePointCalculator(copy, **results)
    return copy


class FrameWriter:
    """Appends frames to a trajectory as they come, flushed each time (an interrupted run keeps them).

    .traj files use ASE's Trajectory; any other multi-frame ASE format (extxyz, xyz, ...) is
    written frame by frame into one open file.
    """

    def __init__(self, path: Path):
        import ase.io.formats

        self.path = Path(path)
        try:
            self.format = ase.io.formats.filetype(self.path, read=False)
            io = ase.io.formats.ioformats[self.format]
        except Exception as error:
            raise click.ClickException(f"cannot write a trajectory to {path}: {one_line(error)}") from None
        if self.format != "traj" and (io.single or not io.can_write):
            raise click.ClickException(
                f"{path}: format {self.format} cannot hold a trajectory; use .traj or .xyz (extended XYZ)"
            )
        if self.format == "traj":
            from ase.io.trajectory import Trajectory

            self._traj, self._file = Trajectory(self.path, "w"), None
        else:
            self._traj, self._file = None, open(self.path, "wb" if io.isbinary else "w")
        self.frames = 0

    def write(self, atoms) -> None:
        import ase.io

        atoms = frozen(atoms)
        if self._traj is not None:
            self._traj.write(atoms)  # ASE's Trajectory flushes each frame
        else:
            ase.io.write(self._file, atoms, format=self.format)
            self._file.flush()
        self.frames += 1

    def close(self) -> None:
        for handle in (self._traj, self._file):
            if handle is not None:
                handle.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------ progress bars


def progressbar(length: int, label: str, show=None):
    """A click progress bar on stderr (just the label where stderr is not a terminal)."""
    return click.progressbar(
        length=length, label=label, file=sys.stderr,
        show_pos=True, show_eta=True, item_show_func=show,
    )
