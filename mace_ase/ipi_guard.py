"""Close a mace-ase client's i-PI connection cleanly once the client is gone, even after SIGKILL.

Run by mace_ase.ipi as `python -I -S ipi_guard.py CONNECTION_FD LIFELINE_FD` (standard library only,
so it starts in milliseconds and stays small). It holds a duplicate of the client's connection, so
the connection outlives the client's own file descriptor, and the read end of a pipe whose write
end only the client holds: the pipe reads end-of-file when the client closes it or dies.

Why: a socket closed with unread bytes is reset (ECONNRESET at the peer) instead of closed, and
i-PI 3.3.1's polling thread dies on that reset, which hangs the whole run. A killed client cannot
read what i-PI sends it: i-PI dispatches the next POSDATA + GETFORCE as soon as the client said
READY, and a SIGKILLed JAX process keeps its files open for tens to hundreds of milliseconds
(35-335 ms measured) while the kernel tears it down. This process reads those bytes, so i-PI
sees an ordinary end-of-file, which it reports ("died or got unresponsive") and recovers from.
"""

import os
import signal
import socket
import sys

LINGER = 300.0  # seconds to wait for i-PI to close its end (TCP only); it does so on its next poll


def close_cleanly(connection: socket.socket) -> None:
    """Stop the traffic, read what is left, then close: the receive queue is empty at the close."""
    try:
        if connection.family == socket.AF_UNIX:
            # Both directions: from here on the kernel refuses i-PI's sends (EPIPE, which i-PI
            # handles), so draining to end-of-file leaves nothing behind.
            connection.shutdown(socket.SHUT_RDWR)
        else:
            # TCP still queues data after SHUT_RD; i-PI stops sending only once it has closed its
            # end, so send our FIN and read until its FIN arrives.
            connection.shutdown(socket.SHUT_WR)
        connection.settimeout(LINGER)
        while connection.recv(1 << 16):
            pass
    except OSError:
        pass  # already reset or closed by i-PI: nothing left to protect
    connection.close()


def main(connection_fd: int, lifeline_fd: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the client's exit, not Ctrl-C, ends this process
    connection = socket.socket(fileno=connection_fd)
    os.read(lifeline_fd, 1)  # the client never writes: this returns when it closes the pipe or dies
    close_cleanly(connection)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
