"""Serve mace-ase forces to an i-PI server (path integrals, replica exchange, many clients).

i-PI integrates; each client evaluates whatever bead it is sent. This client is
ASE's ``SocketClient`` around a ``MaceCalculator``:

    atoms = ase.io.read("init.extxyz")          # species (and pbc) of the system
    serve(atoms, MaceCalculator(dtype="float64"), unixsocket="water")

It waits for the server to open its socket, exits when i-PI sends EXIT (the end
of the run), and when the connection drops without EXIT (i-PI stopped, to be
restarted from its checkpoint) it waits for the server to come back. A client
that is killed, even with SIGKILL, leaves i-PI a connection that closed cleanly
(a small guard process, mace_ase/ipi_guard.py, sees to it), which i-PI reports
and carries on without.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import MaceAseError

DEFAULT_PORT = 31415  # i-PI's and ASE's default
GUARD_WAIT = 5.0  # seconds close() waits for the guard to close the connection


class IPIConnectionError(MaceAseError, ConnectionError):
    """No i-PI server at the address, or the server went away and did not come back."""


class IPIProtocolError(MaceAseError, ValueError):
    """The server sent something this client cannot evaluate (a different number of atoms, say)."""


def parse_address(address: str) -> tuple[str, int]:
    """'host:port' (or ':port', or 'host') -> (host, port)."""
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "")
    try:
        number = int(port) if port else DEFAULT_PORT
    except ValueError:
        raise IPIConnectionError(f"{address!r} is not HOST:PORT (the port must be a number)") from None
    if not 0 < number < 65536:
        raise IPIConnectionError(f"{address!r}: port {number} is out of range")
    return host or "localhost", number


def describe(host: str, port: int | None, unixsocket: str | None) -> str:
    if unixsocket is not None:
        from ase.calculators.socketio import actualunixsocketname

        return f"UNIX socket {actualunixsocketname(unixsocket)}"
    return f"{host}:{port}"


def start_guard(connection: socket.socket) -> tuple[subprocess.Popen, int]:
    """A small process that closes `connection` cleanly once this one is gone (see mace_ase/ipi_guard.py).

    Returns the process and the write end of its lifeline pipe: closing that end (or dying) lets it close.
    """
    lifeline_read, lifeline_write = os.pipe()
    guard = subprocess.Popen(
        [sys.executable, "-I", "-S", str(Path(__file__).with_name("ipi_guard.py")),
         str(connection.fileno()), str(lifeline_read)],
        pass_fds=(connection.fileno(), lifeline_read), stdin=subprocess.DEVNULL,
        # Its own session: a kill aimed at the client's process group does not take it along.
        start_new_session=True,
    )
    os.close(lifeline_read)
    return guard, lifeline_write


def _client_class():
    from ase.calculators.socketio import SocketClient, SocketClosed

    class Client(SocketClient):
        """ASE's client, told apart: EXIT from the server, or a connection that just closed.

        A guard process shares the connection: a client killed with bytes from i-PI still unread would
        reset the connection, and i-PI 3.3.1's polling thread dies on a reset (the run hangs); the
        guard reads those bytes, so i-PI sees the connection close, reports it and carries on.
        """

        def __init__(self, *args, natoms: int, **kwargs):
            super().__init__(*args, **kwargs)
            self.exit_received = False
            self.evaluations = 0
            self.guard, self.lifeline = start_guard(self.protocol.socket)
            protocol, recvmsg, recvposdata = self.protocol, self.protocol.recvmsg, self.protocol.recvposdata

            def watched_recvmsg():
                try:
                    message = recvmsg()
                except (SocketClosed, ConnectionError):
                    raise SocketClosed from None
                self.exit_received |= message == "EXIT"
                return message

            def checked_recvposdata():
                cell, icell, positions = recvposdata()
                if len(positions) != natoms:
                    raise IPIProtocolError(
                        f"i-PI sent {len(positions)} atoms but the structure has {natoms}; "
                        "give the client the system i-PI runs (--structure)"
                    )
                self.evaluations += 1
                return cell, icell, positions

            protocol.recvmsg, protocol.recvposdata = watched_recvmsg, checked_recvposdata

        def close(self):
            super().close()
            if self.lifeline is not None:
                os.close(self.lifeline)  # the guard closes the connection now
                self.lifeline = None
                try:
                    self.guard.wait(timeout=GUARD_WAIT)
                except subprocess.TimeoutExpired:
                    pass  # TCP, i-PI has not closed its end yet: the guard finishes on its own

    return Client


def connect(host: str = "localhost", port: int | None = None, unixsocket: str | None = None, *,
            natoms: int, wait: float = 60.0, log=None):
    """A connected client; retries while no server listens, for up to `wait` seconds."""
    Client = _client_class()
    deadline = time.monotonic() + wait
    while True:
        try:
            return Client(host=host, port=port or DEFAULT_PORT, unixsocket=unixsocket, natoms=natoms, log=log)
        except (ConnectionRefusedError, FileNotFoundError, socket.timeout, OSError) as error:
            if isinstance(error, socket.gaierror):
                raise IPIConnectionError(f"cannot resolve the i-PI host {host!r}: {error}") from None
            if time.monotonic() >= deadline:
                raise IPIConnectionError(
                    f"no i-PI server at {describe(host, port, unixsocket)} after {wait:g} s "
                    f"({error.strerror or error}); start i-PI first, or check the address"
                ) from None
            time.sleep(0.2)


def serve(atoms, calc, *, host: str = "localhost", port: int | None = None, unixsocket: str | None = None,
          wait: float = 60.0, reconnect: float = 60.0, log=None,
          report: Callable[[str], None] | None = None) -> int:
    """Answer i-PI's force requests until it ends the run; returns the number of evaluations.

    atoms: the system (species, pbc); i-PI sends positions and cell each time.
    wait: seconds to wait for the server at the start; reconnect: after a dropped
    connection (0: give up at once). Stress (hence i-PI's virial) is computed for
    fully periodic systems.
    """
    report = report or (lambda message: print(f"mace-ase ipi: {message}", file=sys.stderr, flush=True))
    atoms.calc = calc
    where = describe(host, port, unixsocket)
    use_stress = bool(np.all(atoms.pbc))
    evaluations = 0
    report(f"ready; connecting to i-PI at {where} (waiting up to {wait:g} s)")
    client = connect(host, port, unixsocket, natoms=len(atoms), wait=wait, log=log)
    report(f"connected to i-PI at {where}")
    while True:
        try:
            client.run(atoms, use_stress=use_stress)
        finally:
            evaluations += client.evaluations
            client.close()
        if client.exit_received:
            report(f"i-PI ended the run after {evaluations} force evaluations here")
            return evaluations
        if reconnect <= 0:
            raise IPIConnectionError(f"i-PI at {where} closed the connection without ending the run")
        report(f"the connection to {where} dropped without EXIT; waiting up to {reconnect:g} s for i-PI to come back")
        try:
            client = connect(host, port, unixsocket, natoms=len(atoms), wait=reconnect, log=log)
        except IPIConnectionError:
            raise IPIConnectionError(
                f"lost the connection to i-PI at {where} (no EXIT) and no server came back within {reconnect:g} s"
            ) from None
        report(f"reconnected to i-PI at {where}")
