"""`mace-ase md`: molecular dynamics with a trajectory, an energy log and a plot of the energies.

Nothing is lost on the way: every --interval steps a frame is appended to the trajectory
and a line to the log, each flushed at once. The first Ctrl-C finishes the current step,
closes the files, draws the plot and exits with status 130; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import signal
import warnings
from pathlib import Path

import click
import numpy as np

from .common import (
    FrameWriter,
    default_output,
    existing_file,
    input_options,
    make_calculator,
    model_options,
    new_file,
    progressbar,
    read_structure,
    stderr,
)

EXIT_INTERRUPTED = 130
LOG_COLUMNS = ("time[ps]", "Epot[eV]", "Ekin[eV]", "Etot[eV]", "T[K]")


class StopOnCtrlC:
    """First SIGINT sets `requested` (the loop stops after the step); a second one aborts."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        stderr("\nStopping after this step (Ctrl-C again to abort at once) ...")

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: keep Python's KeyboardInterrupt
            self._previous = None
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class EnergyLog:
    """time, Epot, Ekin, Etot, T: one flushed line per call; np.loadtxt reads it back."""

    def __init__(self, path: Path, header: str):
        self.path = Path(path)
        self._file = open(self.path, "w")
        self._file.write(f"# {header}\n# " + " ".join(f"{c:>16}" for c in LOG_COLUMNS) + "\n")
        self._file.flush()

    def write(self, time_ps: float, atoms) -> None:
        epot, ekin = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        values = (time_ps, epot, ekin, epot + ekin, atoms.get_temperature())
        self._file.write("  " + " ".join(f"{v:16.6f}" for v in values) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def plot_energies(log: Path, png: Path) -> bool:
    """Energies (relative to the first total energy) and temperature against time; False if no data."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a log without data lines (stopped before the first step)
        data = np.loadtxt(log, ndmin=2)
    if len(data) == 0:
        return False
    # A Figure with its own Agg canvas: pyplot and the caller's backend (a notebook's) stay untouched.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    time, epot, ekin, etot, temperature = data.T
    reference = etot[0]
    fig = Figure(figsize=(7, 6))
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(time, etot - reference, label="Etot")
    top.plot(time, epot - reference, label="Epot")
    top.plot(time, ekin, label="Ekin (absolute)")
    top.set_ylabel("energy - Etot(0) [eV]")
    top.set_title(f"Etot(0) = {reference:.4f} eV")
    top.legend()
    bottom.plot(time, temperature, color="tab:red")
    bottom.set_ylabel("T [K]")
    bottom.set_xlabel("time [ps]")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    return True


def _dynamics(atoms, ensemble, timestep_fs, temperature, friction, seed):
    from ase import units

    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=timestep_fs * units.fs)
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin

    # ASE's advice since 3.28: a FixCom constraint instead of Langevin's approximate fixcm=True.
    atoms.set_constraint([*atoms.constraints, FixCom()])
    return Langevin(atoms, timestep=timestep_fs * units.fs, temperature_K=temperature, fixcm=False,
                    friction=friction / units.fs, rng=np.random.default_rng(seed + 1))


def _initial_velocities(atoms, temperature, seed) -> str:
    """Keep the input's velocities; else draw them at `temperature` (no drift, no rotation)."""
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

    if np.any(atoms.get_momenta()):
        return "velocities from the input"
    thermalize_momenta(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    Stationary(atoms)
    if not atoms.pbc.any():
        ZeroRotation(atoms)
    return f"velocities drawn at {temperature:g} K (seed {seed})"


@click.command()
@click.argument("structure", type=existing_file())
@input_options(default_index="-1")
@click.option("--temperature", "-T", default=300.0, show_default=True, type=click.FloatRange(min=0),
              help="K: the initial velocities (unless the input has some) and the Langevin bath.")
@click.option("--steps", default=1000, show_default=True, type=click.IntRange(min=0))
@click.option("--timestep", default=0.5, show_default=True, type=click.FloatRange(min=0, min_open=True), help="fs")
@click.option("--ensemble", type=click.Choice(["nve", "langevin"], case_sensitive=False), default="langevin",
              show_default=True, help="nve: velocity Verlet; langevin: NVT with a Langevin thermostat.")
@click.option("--friction", default=0.01, show_default=True, type=click.FloatRange(min=0),
              help="Langevin friction, 1/fs.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed for the velocities and Langevin noise.")
@model_options
@click.option("--trajectory", type=new_file(), default=None,
              help="Frames (positions, momenta, energy, forces). Default: <stem>-md.xyz in the current folder.")
@click.option("--log", "log_path", type=new_file(), default=None,
              help="Energy log; the plot goes next to it (.png). Default: <stem>-md.log.")
@click.option("--interval", default=10, show_default=True, type=click.IntRange(min=1),
              help="Write a frame and a log line every this many steps.")
def md(structure, index, file_format, temperature, steps, timestep, ensemble, friction, seed,
       model, dtype, accept_license, trajectory, log_path, interval):
    """Run molecular dynamics from STRUCTURE (any ASE-readable file; the last frame by default).

    Writes a trajectory and a log (time, Epot, Ekin, Etot, T) as it goes, and a PNG plot
    of the energies next to the log at the end, also when stopped with Ctrl-C.
    """
    atoms = read_structure(structure, index, file_format)
    trajectory = trajectory or default_output(structure, "-md.xyz")
    log_path = log_path or default_output(structure, "-md.log")
    png = Path(log_path).with_suffix(".png")

    atoms.calc = make_calculator(model, dtype, accept_license)
    velocities = _initial_velocities(atoms, temperature, seed)
    dynamics = _dynamics(atoms, ensemble.lower(), timestep, temperature, friction, seed)
    header = (f"mace-ase md {structure}: {ensemble} {temperature:g} K, {timestep:g} fs, "
              f"model {model or 'default'} ({dtype}), {velocities}")

    done, stop = 0, StopOnCtrlC()
    with FrameWriter(trajectory) as frames, stop:
        log = EnergyLog(log_path, header)
        try:
            with progressbar(steps, f"MD {ensemble} {temperature:g} K") as bar:
                for _ in dynamics.irun(steps):  # yields the start (step 0), then after each step
                    done = dynamics.nsteps
                    if done % interval == 0 or done == steps or stop.requested:
                        frames.write(atoms)
                        log.write(done * timestep * 1e-3, atoms)
                    if done:
                        bar.update(1)
                    if stop.requested:
                        break
        finally:
            log.close()
    plotted = plot_energies(log_path, png)

    click.echo(f"steps        {done} x {timestep:g} fs = {done * timestep * 1e-3:g} ps ({ensemble})")
    click.echo(f"temperature  {atoms.get_temperature():.1f} K (final)")
    click.echo(f"energy       {atoms.get_potential_energy() + atoms.get_kinetic_energy():.6f} eV (final total)")
    click.echo(f"trajectory   {trajectory} ({frames.frames} frames)")
    click.echo(f"log          {log_path}")
    if plotted:
        click.echo(f"plot         {png}")
    if stop.requested:
        stderr(f"Stopped by Ctrl-C after {done} of {steps} steps; the files hold everything up to there.")
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
