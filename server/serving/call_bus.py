"""Word between front-end workers: "your turn N has been superseded".

With several workers (`server.workers`), a call's next turn may arrive on another worker than
the one still streaming its previous turn. The worker that admits the new turn finds the old one
in the shared `CallTable` (`server/serving/calls.py`) and sends its number to the worker that
holds it, as one datagram on that worker's Unix socket in the supervisor's private directory.
The holder ends the turn at once (`Turn.interrupt`), which aborts it in the engine.

A datagram that cannot be delivered (the holder has just died, its queue is full) is logged and
dropped: the holder's turn then ends on its own, as it would have without a newer turn, so
nothing waits on this message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
from collections.abc import Callable

log = logging.getLogger("callgate.calls")

_MESSAGE = struct.Struct("<Q")  # a turn's number in its worker


def _path(directory: str, worker: int) -> str:
    return os.path.join(directory, f"calls-{worker}.sock")


class CallBus:
    """One worker's socket: receives the numbers of its turns to end, sends others theirs."""

    def __init__(self, directory: str, worker: int, on_superseded: Callable[[int], None]) -> None:
        self._directory = directory
        self._on_superseded = on_superseded
        path = _path(directory, worker)
        if os.path.exists(path):
            os.unlink(path)  # left by this worker's predecessor (a restarted worker)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.setblocking(False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._receive)

    def _receive(self) -> None:
        while True:
            try:
                data = self._sock.recv(64)
            except BlockingIOError:
                return
            if len(data) == _MESSAGE.size:
                self._on_superseded(_MESSAGE.unpack(data)[0])
            else:
                log.warning("ignored a %d-byte message on the call bus", len(data))

    def send(self, worker: int, number: int) -> None:
        """Tell `worker` that its turn `number` has been superseded."""
        try:
            self._sock.sendto(_MESSAGE.pack(number), _path(self._directory, worker))
        except OSError as e:
            log.warning("could not tell worker %d to end superseded turn %d: %s", worker, number, e)

    def close(self) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
