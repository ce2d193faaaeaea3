"""Free TCP ports that no other pytest process on this machine will hand out at the same time.

SGLang's own pick (`PortArgs.init_new`: a random offset checked with a bind that is closed again)
races between xdist workers and between concurrent pytest sessions. Here a port is taken only
while its lock file in one machine-wide directory is held (``flock``), so two processes that
both see the port free cannot both keep it. The lock dies with its process: a crashed run leaks
no reservation. Ports this process has used once are never handed out again, so every runner
build gets a fresh rendezvous port (reusing one races the old TCPStore).

Lock files do not pile up: a release unlinks its file while still holding the lock, and a lock is
only trusted when its file is still the one at the path (a racer that opened the file before the
unlink locks an orphan, sees the path gone or replaced, and tries again). The first reservation
in a process also removes files whose lock nobody holds (left by crashed runs), the same way.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import tempfile
from pathlib import Path

from .errors import PortsExhausted

LOCK_DIR = Path(
    os.environ.get("PYTEST_SGLANG_PORT_LOCK_DIR", Path(tempfile.gettempdir()) / "pytest-sglang-runner-ports")
)
_used_in_this_process: set[int] = set()
_swept = False


def _lock_path(port: int) -> Path:
    return LOCK_DIR / f"{port}.lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding the flock on the file now at ``path``, or None (held elsewhere, or replaced)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except FileNotFoundError:  # the directory went away under us
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    try:
        current = os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        current = False
    if not current:  # we locked a file that its holder unlinked on release
        os.close(fd)
        return None
    return fd


def _unlink_and_unlock(path: Path, fd: int) -> None:
    try:
        os.unlink(path)  # while locked: nobody can trust this inode any more
    except FileNotFoundError:
        pass
    os.close(fd)


def sweep_stale_lock_files() -> int:
    """Remove lock files nobody holds (left by killed runs); returns how many went."""
    removed = 0
    for path in LOCK_DIR.glob("*.lock"):
        fd = _try_lock(path)
        if fd is not None:
            _unlink_and_unlock(path, fd)
            removed += 1
    return removed


class PortReservation:
    """One reserved port; `release()` (or the process ending) gives it back and removes its lock file."""

    def __init__(self, port: int, lock_fd: int):
        self.port = port
        self._lock_fd: int | None = lock_fd

    @property
    def held(self) -> bool:
        return self._lock_fd is not None

    def release(self) -> None:
        if self._lock_fd is not None:
            _unlink_and_unlock(_lock_path(self.port), self._lock_fd)
            self._lock_fd = None

    def __repr__(self) -> str:
        return f"PortReservation({self.port}, held={self.held})"


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _candidate() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reserve_port(attempts: int = 200) -> PortReservation:
    """Reserve a port that is free now, not locked by any other process, and new to this one."""
    global _swept
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    if not _swept:
        _swept = True
        sweep_stale_lock_files()
    for _ in range(attempts):
        port = _candidate()
        if port in _used_in_this_process:
            continue
        fd = _try_lock(_lock_path(port))
        if fd is None:
            continue
        # Locked: check again that nobody bound it between the candidate pick and the lock.
        if not _bindable(port):
            _unlink_and_unlock(_lock_path(port), fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        _used_in_this_process.add(port)
        return PortReservation(port, fd)
    raise PortsExhausted(
        f"no free TCP port on 127.0.0.1 after {attempts} tries: each was in use or reserved by another pytest process "
        f"(lock files in {LOCK_DIR}); stop the processes holding ports, or remove that directory when no pytest runs"
    )


def reserve_ports(count: int) -> list[PortReservation]:
    reservations: list[PortReservation] = []
    try:
        for _ in range(count):
            reservations.append(reserve_port())
    except BaseException:
        for reservation in reservations:
            reservation.release()
        raise
    return reservations
