"""i-PI: `mace-ase ipi` clients driven by the real i-PI server (PyPI `ipi`), and the client's connection logic.

References: MaceCalculator (float64) on the positions i-PI saved in its checkpoint; the
unit conversions are undone with i-PI's and ASE's own constants. Model: a small random
MACE; the point is the plumbing, every number is checked against the calculator.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from ase import units
from ase.calculators.lj import LennardJones
from ase.calculators.socketio import SocketServer
from ase.io import write
from click.testing import CliRunner
from conftest import REPO, require, small_model

from mace_ase.archive import save_archive
from mace_ase.calculator import MaceCalculator
from mace_ase.cli.main import main
from mace_ase.ipi import IPIConnectionError, serve

INPUT = """<simulation verbosity='medium' floatformat='%.17e'>
  <output prefix='sim'>
    <properties stride='1' filename='out' flush='1'> [ step, conserved{{electronvolt}}, potential{{electronvolt}} ] </properties>
  </output>
  <total_steps>{steps}</total_steps>
  <prng><seed>31415</seed></prng>
  <ffsocket name='mace' mode='unix' pbc='false'><address>{socket}</address><latency>1e-3</latency></ffsocket>
  <system>
    <initialize nbeads='{beads}'>
      <file mode='ase'> init.extxyz </file>
      <velocities mode='thermal' units='kelvin'> 300 </velocities>
    </initialize>
    <forces><force forcefield='mace'/></forces>
    <ensemble><temperature units='kelvin'>300</temperature></ensemble>
    <motion mode='dynamics'>
      <dynamics mode='{mode}'>
        <timestep units='femtosecond'>0.5</timestep>
        {thermostat}
      </dynamics>
    </motion>
  </system>
</simulation>
"""
PILE = "<thermostat mode='pile_l'><tau units='femtosecond'>100</tau></thermostat>"


def model():
    return small_model(atomic_numbers=(1, 8), cutoff=3.0)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The 64-water box (extended XYZ, read by i-PI and the clients), the model archive, a shared JAX cache."""
    require("ipi")
    sys.path.insert(0, str(REPO))
    from benchmarks.systems import water_box

    folder = tmp_path_factory.mktemp("ipi")
    atoms = water_box(4)
    atoms.rattle(0.05, seed=1)
    write(folder / "init.extxyz", atoms)
    save_archive(model(), folder / "small.zip")
    return folder, atoms


def i_pi_command(folder: Path) -> list[str]:
    script = shutil.which("i-pi", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert script, "the i-pi script of the ipi package is not on PATH"
    return [sys.executable, script, "input.xml"]


def client_command(folder: Path, name: str) -> list[str]:
    return [sys.executable, "-m", "mace_ase.cli", "ipi", "--unix", name, "--structure", "init.extxyz",
            "--model", "small.zip", "--dtype", "float64", "--wait", "60", "--reconnect", "0"]


class Processes:
    """Started processes, each in its own process group; all killed on exit, whatever happened."""

    def __init__(self, folder: Path, cache: Path):
        self.folder, self.started = folder, []
        self.env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache),
                        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", OMP_NUM_THREADS="1")

    def start(self, command, log: str):
        handle = open(self.folder / log, "w")
        process = subprocess.Popen(command, cwd=self.folder, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        self.started.append((process, handle))
        return process

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for process, handle in self.started:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
            handle.close()


def wait_for(process, timeout: float, what: str) -> int:
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {timeout} s")


def properties(folder: Path) -> np.ndarray:
    rows = [line.split() for line in (folder / "sim.out").read_text().splitlines() if not line.startswith("#")]
    return np.array(rows, dtype=float).reshape(-1, 3)


def checkpoint(folder: Path):
    """(step, bead positions [beads, n, 3] and cell as the clients saw them, in Å) from i-PI's RESTART."""
    root = ET.parse(folder / "RESTART").getroot()
    q_node = root.find(".//beads/q")
    shape = tuple(int(k) for k in q_node.get("shape").strip("()").split(",") if k.strip())
    q = np.array(q_node.text.replace("[", " ").replace("]", " ").replace(",", " ").split(), float).reshape(shape)
    h_node = root.find(".//cell")
    h = np.array(h_node.text.replace("[", " ").replace("]", " ").replace(",", " ").split(), float).reshape(3, 3)
    # The socket carries atomic units; ASE's client turns them into Å with ASE's Bohr.
    return int(root.find(".//step").text), q.reshape(shape[0], -1, 3) * units.Bohr, h.T * units.Bohr


def client_energy(folder: Path, step: int) -> float:
    """The potential energy i-PI printed for `step`, back in the client's eV (ASE's Hartree, not i-PI's)."""
    from ipi.utils.units import unit_to_user

    table = properties(folder)
    row = table[table[:, 0] == step]
    assert len(row) == 1, f"no properties line for step {step}"
    return row[0, 2] / unit_to_user("energy", "electronvolt", 1.0) * units.Ha


def mean_bead_energy(atoms, beads, cell):
    calc = MaceCalculator(model(), dtype="float64")
    energies = []
    for positions in beads:
        frame = atoms.copy()
        frame.positions, frame.cell = positions, cell
        frame.calc = calc
        energies.append(frame.get_potential_energy())
    return float(np.mean(energies))


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax-cache")


def test_nve_water_one_client(setup, jax_cache):
    folder, atoms = setup
    run = folder / "nve"
    run.mkdir()
    for name in ("init.extxyz", "small.zip"):
        (run / name).symlink_to(folder / name)
    name = f"mace-test-{uuid.uuid4().hex[:8]}"
    (run / "input.xml").write_text(INPUT.format(steps=10, socket=name, beads=1, mode="nve", thermostat=""))
    with Processes(run, jax_cache) as processes:
        server = processes.start(i_pi_command(run), "i-pi.log")
        client = processes.start(client_command(run, name), "client.log")
        assert wait_for(client, 120, "the mace-ase client") == 0, (run / "client.log").read_text()[-2000:]
        assert wait_for(server, 30, "i-PI") == 0, (run / "i-pi.log").read_text()[-2000:]
    assert "i-PI ended the run after 11 force evaluations here" in (run / "client.log").read_text()
    step, beads, cell = checkpoint(run)
    assert step == 10 and beads.shape == (1, len(atoms), 3)
    assert client_energy(run, step) == pytest.approx(mean_bead_energy(atoms, beads, cell), abs=1e-8)
    conserved = properties(run)[:, 1]
    # NVE: the conserved quantity stays put while the potential moves (i-PI integrates our forces).
    assert np.ptp(conserved) < 0.02 * np.ptp(properties(run)[:, 2])


def test_pimd_two_clients_one_killed(setup, jax_cache):
    """4 beads, 2 clients; one is killed (SIGKILL) mid-run: i-PI reports it, the other finishes the run.

    The kill lands while the victim computes or while it waits for i-PI's next request, which
    i-PI may send to the dying process. A kill that leaves bytes unread used to reset the
    connection, and i-PI 3.3.1's polling thread dies on ConnectionResetError: the run hung
    (3 runs in 10 on the earlier client). The client's guard process closes it cleanly."""
    folder, atoms = setup
    steps, beads = 12, 4
    run = folder / "pimd"
    run.mkdir()
    for name in ("init.extxyz", "small.zip"):
        (run / name).symlink_to(folder / name)
    name = f"mace-test-{uuid.uuid4().hex[:8]}"
    (run / "input.xml").write_text(INPUT.format(steps=steps, socket=name, beads=beads, mode="nvt", thermostat=PILE))
    with Processes(run, jax_cache) as processes:
        # Both clients ready before i-PI starts, so that both serve beads from the first step.
        survivor = processes.start(client_command(run, name), "client-a.log")
        victim = processes.start(client_command(run, name), "client-b.log")
        deadline = time.monotonic() + 120
        while not all("connecting to i-PI" in (run / log).read_text() for log in ("client-a.log", "client-b.log")):
            assert time.monotonic() < deadline, "the clients did not get ready"
            assert survivor.poll() is None and victim.poll() is None, (run / "client-a.log").read_text()[-2000:]
            time.sleep(0.1)
        server = processes.start(i_pi_command(run), "i-pi.log")
        while not ((run / "sim.out").exists() and len(properties(run)) >= 4):
            assert time.monotonic() < deadline, "i-PI made no progress"
            assert server.poll() is None, (run / "i-pi.log").read_text()[-2000:]
            time.sleep(0.1)
        victim.kill()
        try:
            survivor.wait(timeout=120)
        except subprocess.TimeoutExpired:
            log = (run / "i-pi.log").read_text()
            reset = "ConnectionResetError" in log
            pytest.fail("i-PI hung after the kill: the surviving client did not finish within 120 s"
                        + (" (i-PI's polling thread died on ConnectionResetError: the killed client reset "
                           "the connection)" if reset else "") + "\n" + log[-2000:])
        assert survivor.returncode == 0, (run / "client-a.log").read_text()[-2000:]
        assert wait_for(server, 30, "i-PI") == 0
    log = (run / "i-pi.log").read_text()
    assert "died or got unresponsive" in log and "ConnectionResetError" not in log  # reported, and the run went on
    served = int(((run / "client-a.log").read_text().split("after ")[-1]).split()[0])
    assert 0 < served < beads * (steps + 1)  # the killed client had served some beads too
    step, bead_positions, cell = checkpoint(run)
    assert step == steps and bead_positions.shape == (beads, len(atoms), 3)
    assert np.ptp(bead_positions, axis=0).max() > 1e-3  # distinct beads (a real ring polymer)
    assert client_energy(run, step) == pytest.approx(mean_bead_energy(atoms, bead_positions, cell), abs=1e-8)


# ------------------------------------------------------------------ the client's connection logic


def lj_water(setup):
    _, atoms = setup
    atoms = atoms.copy()
    atoms.pbc = False
    return atoms


def test_reconnects_after_a_dropped_connection_and_exits_on_exit(setup):
    """The server drops the connection without EXIT, comes back, then ends the run: the client follows."""
    atoms = lj_water(setup)
    name = f"mace-test-{uuid.uuid4().hex[:8]}"
    done = {}

    def client():
        try:
            done["evaluations"] = serve(atoms.copy(), LennardJones(rc=3.0), unixsocket=name, wait=10, reconnect=10,
                                        report=lambda m: done.setdefault("messages", []).append(m))
        except Exception as error:  # noqa: BLE001
            done["error"] = error

    thread = threading.Thread(target=client, daemon=True)
    expected = atoms.copy()
    expected.calc = LennardJones(rc=3.0)
    with SocketServer(unixsocket=name, timeout=30) as server:
        thread.start()
        first = atoms.copy()
        first.positions[0] += 0.1
        result = server.calculate(first)
        expected.positions = first.positions
        assert result["energy"] == pytest.approx(expected.get_potential_energy(), rel=1e-10)
    # The first server is gone without EXIT (as when i-PI is stopped to restart from its checkpoint).
    with SocketServer(unixsocket=name, timeout=30) as server:
        result = server.calculate(atoms)
        expected.positions = atoms.positions
        assert np.abs(result["forces"] - expected.get_forces()).max() < 1e-8
        server.protocol.sendmsg("EXIT")
        thread.join(timeout=20)
    assert not thread.is_alive() and "error" not in done, done
    assert done["evaluations"] == 2
    assert any("dropped without EXIT" in m for m in done["messages"])
    assert any("reconnected" in m for m in done["messages"])


def test_no_server_comes_back(setup):
    atoms = lj_water(setup)
    name = f"mace-test-{uuid.uuid4().hex[:8]}"
    errors = {}

    def client():
        try:
            serve(atoms.copy(), LennardJones(rc=3.0), unixsocket=name, wait=10, reconnect=0.5, report=lambda m: None)
        except IPIConnectionError as error:
            errors["error"] = error

    thread = threading.Thread(target=client, daemon=True)
    with SocketServer(unixsocket=name, timeout=30) as server:
        thread.start()
        server.calculate(atoms)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert "no server came back within 0.5 s" in str(errors["error"])


CLIENT = """
import sys
from ase.build import molecule
from ase.calculators.lj import LennardJones
from mace_ase.ipi import serve
where = dict(port=int(sys.argv[2])) if sys.argv[1] == "inet" else dict(unixsocket=sys.argv[2])
serve(molecule("H2O"), LennardJones(), wait=30, reconnect=0, **where)
"""


@pytest.mark.parametrize("family", ["unix", "inet"])
def test_a_killed_client_closes_the_connection_without_a_reset(family):
    """SIGKILL with i-PI's next POSDATA + GETFORCE unread: the server reads end-of-file, not a reset.

    The client is stopped before those bytes come, as when i-PI sends them to a client that is
    being killed. Without the guard the kernel resets the connection (ConnectionResetError here),
    which kills i-PI 3.3.1's polling thread."""
    import psutil
    from ase.build import molecule

    atoms = molecule("H2O")
    where = dict(port=free_port()) if family == "inet" else dict(unixsocket=f"mace-test-{uuid.uuid4().hex[:8]}")
    client = None
    try:
        with SocketServer(timeout=30, **where) as server:
            client = subprocess.Popen([sys.executable, "-c", CLIENT, family, str(next(iter(where.values())))],
                                      stdout=subprocess.DEVNULL)
            server.calculate(atoms)  # one round trip; the client now waits for the next request
            guards = psutil.Process(client.pid).children()
            client.send_signal(signal.SIGSTOP)
            while psutil.Process(client.pid).status() != psutil.STATUS_STOPPED:  # it reads nothing more
                time.sleep(0.01)
            server.protocol.sendposdata(np.eye(3) * 20, np.eye(3) / 20, atoms.positions)
            server.protocol.sendmsg("GETFORCE")
            client.kill()
            client.wait(timeout=20)
            connection = server.protocol.socket
            connection.settimeout(20)
            try:
                leftover = connection.recv(12)
            except ConnectionResetError:
                pytest.fail("the killed client reset the connection (i-PI 3.3.1 hangs on that)")
            assert leftover == b""
        # The server has closed its end (over TCP the guard waits for that): the guard is gone.
        assert len(guards) == 1
        _, alive = psutil.wait_procs(guards, timeout=20)
        assert not alive, "the guard process outlived its client and the server"
    finally:
        if client is not None:
            client.kill()
            client.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def test_unreachable_address_is_one_clear_error(setup):
    folder, _ = setup
    port = free_port()
    start = time.monotonic()
    result = CliRunner().invoke(main, ["ipi", "--address", f"localhost:{port}", "--wait", "1",
                                       "--structure", str(folder / "init.extxyz"), "--model", str(folder / "small.zip")])
    assert result.exit_code == 1
    assert f"Error: no i-PI server at localhost:{port} after 1 s" in result.output
    assert "Traceback" not in result.output
    assert time.monotonic() - start < 60


def test_address_must_be_host_port(setup):
    folder, _ = setup
    result = CliRunner().invoke(main, ["ipi", "--address", "localhost:http", "--structure", str(folder / "init.extxyz")])
    assert result.exit_code == 1 and "not HOST:PORT" in result.output
    result = CliRunner().invoke(main, ["ipi", "--structure", str(folder / "init.extxyz")])
    assert result.exit_code == 2 and "exactly one of --address HOST:PORT or --unix NAME" in result.output


def test_pimd_example_is_an_ipi_input():
    """examples/ipi: i-PI's own parser accepts input.xml; run.sh points the clients at its socket."""
    require("ipi")
    from ipi.inputs.simulation import InputSimulation
    from ipi.utils.io.inputs import io_xml

    folder = REPO / "examples" / "ipi"
    with open(folder / "input.xml") as handle:
        parsed = io_xml.xml_parse_file(handle)
    simulation = InputSimulation()
    simulation.parse(parsed.fields[0][1])
    root = ET.parse(folder / "input.xml").getroot()
    assert root.find(".//initialize").get("nbeads") == "4"
    address = root.find(".//ffsocket/address").text.strip()
    assert f"mace-ase ipi --unix {address} --structure init.extxyz" in (folder / "run.sh").read_text()
