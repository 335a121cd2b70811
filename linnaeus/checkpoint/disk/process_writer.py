"""Background saves serialised, hashed and written by a child process.

The thread writer (:class:`.background.AsyncWriter`) holds the training loop only for the
snapshot, but the rest of its work is Python too (``torch.save``'s pickling and zip records,
the hash dispatch) and takes the interpreter's lock from the loop while the file is written.
:class:`ProcessWriter` keeps the snapshot and the thread and moves that work out of the process:

- the snapshot's storages are carved from shared memory (``memfd`` slabs: anonymous, so a
  container's small ``/dev/shm`` does not limit them and nothing is left behind when the
  processes go), and reused from one save to the next like the thread writer's;
- the thread sends the child the state's structure (a pickle whose tensors name their slab and
  offset; the child maps each slab once) and waits while the child writes the temp file with
  :func:`.hashed_file.write_hashed`, the same bytes as a save in this process;
- the commit (sidecar, rename, ``latest``) stays in this process, which holds the directory's
  writer lock; the child only ever writes the hidden temp file this process named.

The child dies with this process (``PR_SET_PDEATHSIG``, and a watchdog of its parent pid where
that is missing), so a ``kill -9`` of a training process never leaves a writer behind in a
directory that the relaunch locks. A child that dies fails the save in flight (an error the
caller sees, like a failed write); the next save starts a new one.

With a phase hook installed (:mod:`..testing`), the child reports every phase to this process
and waits until this process's hook has run: a fault test stops and kills the training process
at a phase of the child's write as it would a thread writer's.
"""

from __future__ import annotations

import io
import os
import pickle
import select
import socket
import subprocess
import sys
import threading
import weakref
from pathlib import Path
from typing import Any

import torch

from ..testing import phase, phase_hook_installed
from .background import AsyncWriter
from .hashed_file import Serializer, Written, write_hashed
from .writer_child import Channel, Slab, carve, child_main

_SLAB_BYTES = 64 << 20  # storages are carved from memfd slabs of at least this size
_ALIGN = 64
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])  # the child imports linnaeus from here
_IGNORED = ("SIGINT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2")  # see _start_child


class _Pickler(pickle.Pickler):
    """Pickles a snapshot with each shared storage as (slab, offset, size, dtype), not its bytes."""

    def __init__(self, file: io.BytesIO, where: dict[int, tuple[int, int, int]]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._where = where

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, torch.storage.TypedStorage):
            loc = self._where.get(obj._untyped_storage._cdata)
            if loc is not None:
                return (*loc, obj.dtype)
        return None  # anything else (a rare tensor kind's private copy) travels by value


class WriterProcessError(RuntimeError):
    """The writer process failed or died; the message says which and what it was writing."""


class ProcessWriter(AsyncWriter):
    """An :class:`AsyncWriter` whose jobs' file writes run in a child process (module docstring)."""

    def __init__(self, name: str = "checkpoint") -> None:
        super().__init__(name, reuse_buffers=True, allocate=self._allocate)
        self._slabs: dict[int, Slab] = {}
        self._where: dict[int, tuple[int, int, int]] = {}  # storage _cdata → (slab, offset, size)
        self._current: Slab | None = None
        self._next_slab = self._empties = 0
        self._child: subprocess.Popen[bytes] | None = None
        self._channel: Channel | None = None
        self._sent: set[int] = set()  # slabs the child has mapped
        self._ready = False  # the child has said it takes saves

    # ----------------------------------------------------------------- this process's side
    def _allocate(self, nbytes: int) -> torch.UntypedStorage:
        if nbytes == 0:  # nothing to map, but its identity counts (aliases of one empty tensor): slab -1
            storage = torch.UntypedStorage(0)
            self._empties += 1
            self._where[storage._cdata] = (-1, self._empties, 0)
            return storage
        slab = self._current
        offset = (slab.used + _ALIGN - 1) // _ALIGN * _ALIGN if slab is not None else 0
        if slab is None or offset + nbytes > slab.nbytes:
            self._next_slab += 1
            slab = self._current = Slab(self._next_slab, max(nbytes, _SLAB_BYTES))
            self._slabs[slab.id] = slab
            offset = 0
        slab.used = offset + nbytes
        storage = carve(slab.view, offset, nbytes)
        self._where[storage._cdata] = (slab.id, offset, nbytes)
        return storage

    def start(self) -> None:
        """Start the writer process now (it imports torch: seconds), not at the first save."""
        if self._child is None or self._child.poll() is not None:
            self._start_child()

    def submit(self, job: Any, description: str) -> None:
        self.wait_idle()
        self.start()  # again if it died: that save failed, this one gets a new writer
        super().submit(job, description)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Whether the writer process has started and takes saves (waits up to ``timeout`` seconds for it)."""
        if self._ready:
            return True
        channel = self._channel
        if channel is None or not select.select([channel.sock], [], [], timeout)[0]:
            return False
        try:
            self._ready = channel.recv()[0] == "ready"
        except EOFError:
            return False  # it died starting: the save goes on here, and the next one starts a new one
        return self._ready

    def write_file(self, path: Path, state: Any, serialize: Serializer = torch.save) -> Written:
        if serialize is not torch.save or not self.wait_ready(0):
            # Another serialiser is this process's code. A writer process still importing torch (seconds
            # after a launch) would hold this save, and the next one behind it: this one is written here.
            return write_hashed(path, state, serialize)
        channel, child = self._channel, self._child
        assert channel is not None and child is not None, "submit() starts the child"
        # Only the storages of this snapshot are shared (alive, so their _cdata are unique); the
        # slabs none of them lies in are unmapped here and in the child.
        self._where = {s._cdata: self._where[s._cdata] for s in self._last_storages if s._cdata in self._where}
        live = {loc[0] for loc in self._where.values() if loc[0] >= 0}
        dropped = [s for s in self._slabs if s not in live and self._slabs[s] is not self._current]
        for slab_id in dropped:
            self._slabs.pop(slab_id).close_fd()  # its memory goes with the last storage carved from it
            self._sent.discard(slab_id)
        buf = io.BytesIO()
        _Pickler(buf, self._where).dump(state)
        clean = False
        try:
            unsent = sorted(live - self._sent)
            if unsent:
                channel.send(("slabs", [(s, self._slabs[s].nbytes) for s in unsent]))
                channel.send_fds([self._slabs[s].fd for s in unsent])  # type: ignore[misc]
                self._sent.update(unsent)
            channel.send(("write", str(path), buf.getvalue(), dropped, phase_hook_installed()))
            while True:
                message = channel.recv()
                if message[0] == "phase":
                    phase(message[1], message[2])
                    channel.send(("ack",))
                    continue
                clean = True
                if message[0] == "done":
                    return message[1]
                _, error, text = message
                if isinstance(error, BaseException):
                    error.add_note(f"(raised in the writer process, pid {child.pid}:)\n{text}")
                    raise error
                raise WriterProcessError(f"the writer process (pid {child.pid}) failed writing {path}:\n{text}")
        except (EOFError, OSError) as e:
            if clean:
                raise  # the child's own error (ENOSPC, ...), reported in order
            # The socket broke: the child died (reset, end-of-file) or stopped answering.
            try:
                status = f"exited with code {child.wait(timeout=5)}"
            except subprocess.TimeoutExpired:
                status = f"stopped answering ({type(e).__name__}: {e})"
            raise WriterProcessError(f"the writer process (pid {child.pid}) {status} while writing {path}; "
                                     "the next save starts a new writer process") from e
        finally:
            if not clean:
                # Interrupted mid-conversation (a phase hook raised, the socket failed): the child
                # may still be writing the file the caller is about to remove. Stop it first.
                self._stop_child(kill=True)

    def _start_child(self) -> None:
        self._stop_child()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        # The signals that stop or preempt a run (Ctrl-C reaches the whole process group; Slurm signals
        # every process of a step) are for the training process, whose last save the child must still
        # write: it ignores them from its first instruction, and ends with its parent or at EOF.
        # -c, not -m: the package's __init__ imports this module, which -m would then run a second time.
        argv = [sys.executable, "-c", f"import signal\nfor s in {_IGNORED!r}: signal.signal(getattr(signal, s), "
                f"signal.SIG_IGN)\nfrom {child_main.__module__} import child_main\nchild_main({theirs.fileno()}, {os.getpid()})"]
        self._child = _keeper.spawn(argv, env, theirs.fileno())
        theirs.close()
        self._channel = Channel(mine)
        _writers.add(self)
        self._sent, self._ready = set(), False

    def _stop_child(self, kill: bool = False) -> None:
        child, channel = self._child, self._channel
        self._child = self._channel = None
        if channel is not None:
            try:
                if not kill:
                    channel.send(("stop",))  # between jobs it reads this at once
            except OSError:
                pass  # it is gone already
            channel.sock.close()
        if child is not None and kill:
            child.kill()
            child.wait()  # so that it has stopped writing before the caller removes its file
        # Otherwise not waited for: it has nothing in flight (the caller waited for the last job) and
        # its interpreter's exit takes most of a second; subprocess reaps it later.

    def release_buffers(self) -> None:
        super().release_buffers()
        self._stop_child()
        for slab in self._slabs.values():
            slab.close_fd()
        self._slabs, self._where, self._current, self._sent = {}, {}, None, set()

    @property
    def child_pid(self) -> int | None:
        """The writer process's pid while it runs (tests kill it, or watch it die with this process)."""
        return self._child.pid if self._child is not None and self._child.poll() is None else None


class _Keeper:
    """Starts writer processes from one thread that lives as long as this process.

    PR_SET_PDEATHSIG fires when the thread that started the child ends, not the process: a child
    started from a short-lived thread would be killed mid-write. This thread never ends. (Not a
    ``ThreadPoolExecutor``: its threads end at interpreter exit before the non-daemon writer thread
    is joined, which would kill the child writing the last save.)"""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[tuple[list[str], dict[str, str], int, list[Any], threading.Event]] = []
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def spawn(self, argv: list[str], env: dict[str, str], fd: int) -> subprocess.Popen[bytes]:
        done = threading.Event()
        box: list[Any] = []
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="linnaeus-writer-keeper", daemon=True)
                self._thread.start()
            self._requests.append((argv, env, fd, box, done))
            self._wake.notify()
        done.wait()
        if isinstance(box[0], BaseException):
            raise box[0]
        return box[0]

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._requests:
                    self._wake.wait()
                argv, env, fd, box, done = self._requests.pop(0)
            try:
                # A session of its own: signals for the training process's group (Ctrl-C, torchrun
                # closing its workers) do not reach it, even before it has set them to be ignored.
                box.append(subprocess.Popen(argv, env=env, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                                            start_new_session=True))
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box.append(e)
            done.set()


_keeper = _Keeper()
_writers: weakref.WeakSet[ProcessWriter] = weakref.WeakSet()


def _forget_after_fork() -> None:
    # A forked child (a DataLoader worker) must not hold a writer's socket: the writer process would
    # not see the end-of-file when the training process goes, and the child is no writer's parent.
    for writer in list(_writers):
        if writer._channel is not None:
            writer._channel.sock.close()
        writer._child = writer._channel = None
    _writers.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


__all__ = ["ProcessWriter", "WriterProcessError"]
