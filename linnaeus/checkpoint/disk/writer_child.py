"""The writer process's side of :mod:`.process_writer`: map the slabs it is sent, write what it is
asked to, report; and the pieces both sides share (the channel, the slabs).

It runs as ``python -c`` (see ``ProcessWriter._start_child``) with the stopping signals ignored and
in a session of its own, and dies with its parent.
"""

from __future__ import annotations

import ctypes
import io
import mmap
import os
import pickle
import signal
import socket
import struct
import threading
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from ..testing import set_test_phase_hook
from .hashed_file import write_hashed

_MAX_FDS = 200  # file descriptors per message (the kernel's limit is 253)


class Channel:
    """Length-prefixed pickles over a Unix stream socket, and file descriptors beside them."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self.sock.sendall(struct.pack("<Q", len(data)) + data)

    def recv(self) -> Any:
        (size,) = struct.unpack("<Q", self._exactly(8))
        return pickle.loads(self._exactly(size))  # noqa: S301 - our own parent or child, over a socketpair

    def send_fds(self, fds: list[int]) -> None:
        for i in range(0, len(fds), _MAX_FDS):
            socket.send_fds(self.sock, [b"F"], fds[i:i + _MAX_FDS])

    def recv_fds(self, count: int) -> list[int]:
        fds: list[int] = []
        while len(fds) < count:
            _, got, _, _ = socket.recv_fds(self.sock, 1, min(_MAX_FDS, count - len(fds)))
            if not got:
                raise EOFError("the other end closed the socket")
            fds.extend(got)
        return fds

    def _exactly(self, size: int) -> bytes:
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            n = self.sock.recv_into(view[got:])
            if n == 0:
                raise EOFError("the other end closed the socket")
            got += n
        return bytes(buf)


def carve(buffer: memoryview, offset: int, nbytes: int) -> torch.UntypedStorage:
    return torch.frombuffer(buffer[offset:offset + nbytes], dtype=torch.uint8).untyped_storage()


class Slab:
    def __init__(self, slab_id: int, nbytes: int, fd: int | None = None) -> None:
        self.id, self.nbytes = slab_id, nbytes
        self.fd = fd if fd is not None else os.memfd_create(f"linnaeus-snapshot-{slab_id}", os.MFD_CLOEXEC)
        if fd is None:
            os.ftruncate(self.fd, nbytes)
        self.view = memoryview(mmap.mmap(self.fd, nbytes))  # the storages carved from it keep it mapped
        self.used = 0

    def close_fd(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, slabs: dict[int, Slab]) -> None:
        super().__init__(io.BytesIO(data))
        self._slabs = slabs
        # One storage object per location: tensors that shared a storage still share one, so
        # torch.save writes it once (tied weights stay tied), as it would in the parent.
        self._storages: dict[tuple[int, int, int], torch.UntypedStorage] = {}

    def persistent_load(self, pid: Any) -> Any:
        slab, offset, nbytes, dtype = pid
        key = (slab, offset, nbytes)
        storage = self._storages.get(key)
        if storage is None:
            storage = self._storages[key] = carve(self._slabs[slab].view, offset, nbytes) if nbytes else \
                torch.UntypedStorage(0)
        return torch.storage.TypedStorage(wrap_storage=storage, dtype=dtype, _internal=True)


def _die_with_parent(parent: int) -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog below is all there is

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent:  # the parent died before prctl
        os._exit(1)
    threading.Thread(target=watch, name="linnaeus-writer-watchdog", daemon=True).start()


def child_main(fd: int, parent: int) -> None:
    """The writer process: map the slabs it is sent, write what it is asked to, report."""
    _die_with_parent(parent)
    try:
        _serve(fd)
    except (EOFError, BrokenPipeError, ConnectionResetError):
        pass  # the parent closed the socket (it stopped us, or it is gone): nothing is left to report to


def _serve(fd: int) -> None:
    channel = Channel(socket.socket(fileno=fd))
    slabs: dict[int, Slab] = {}
    relay = [False]

    def hook(name: str, nbytes: int) -> None:
        if relay[0]:
            channel.send(("phase", name, nbytes))
            channel.recv()  # the parent's ack: its hook has run

    set_test_phase_hook(hook)
    channel.send(("ready",))
    while True:
        message = channel.recv()  # EOFError when the parent closes the socket: we are done
        if message[0] == "stop":
            return
        if message[0] == "slabs":
            fds = channel.recv_fds(len(message[1]))
            for (slab_id, nbytes), slab_fd in zip(message[1], fds):
                slabs[slab_id] = Slab(slab_id, nbytes, fd=slab_fd)
                slabs[slab_id].close_fd()
            continue
        _, path, payload, dropped, relay[0] = message
        for slab_id in dropped:
            slabs.pop(slab_id, None)
        try:
            state = _Unpickler(payload, slabs).load()
            written = write_hashed(Path(path), state)
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
            text = traceback.format_exc()
            try:
                error: Any = pickle.loads(pickle.dumps(e))  # noqa: S301 - our own exception, round-tripped
            except Exception:  # noqa: BLE001 - an exception that does not pickle travels as text
                error = None
            channel.send(("error", error, text))
            continue
        del state
        channel.send(("done", written))


__all__ = ["Channel", "Slab", "carve", "child_main"]
