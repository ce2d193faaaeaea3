"""Port reservations hold across processes and are freed on release or process exit."""

import fcntl
import os
import subprocess
import sys

from pytest_sglang_runner import ports


def lock_is_held_elsewhere(port: int) -> bool:
    try:
        fd = os.open(ports.LOCK_DIR / f"{port}.lock", os.O_RDWR)
    except FileNotFoundError:  # released: the file went with the lock
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # also drops the lock just taken
    return False


HOLD_PORTS = """
import sys, time
from pytest_sglang_runner import ports
held = ports.reserve_ports(20)
print(" ".join(str(r.port) for r in held), flush=True)
sys.stdin.readline()
"""


def test_reservations_of_two_processes_never_overlap():
    children = [
        subprocess.Popen([sys.executable, "-c", HOLD_PORTS], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        taken = [set(map(int, child.stdout.readline().split())) for child in children]
        mine = ports.reserve_ports(20)
        assert len(taken[0]) == len(taken[1]) == 20
        assert not taken[0] & taken[1] and not {r.port for r in mine} & (taken[0] | taken[1])
        assert all(lock_is_held_elsewhere(port) for port in taken[0])
        for reservation in mine:
            reservation.release()
    finally:
        for child in children:
            child.communicate("\n", timeout=30)
    # The children are gone, and with them their locks.
    assert not any(lock_is_held_elsewhere(port) for port in taken[0] | taken[1])


def test_release_frees_the_lock_and_the_port_is_not_handed_out_again():
    reservation = ports.reserve_port()
    assert reservation.held
    reservation.release()
    assert not reservation.held and not lock_is_held_elsewhere(reservation.port)
    again = ports.reserve_ports(50)
    assert reservation.port not in {r.port for r in again}  # fresh port for every build
    for r in again:
        r.release()


def test_release_removes_the_lock_file():
    reservation = ports.reserve_port()
    path = ports.LOCK_DIR / f"{reservation.port}.lock"
    assert path.exists()
    racer = os.open(path, os.O_RDWR)  # opened before the release, as a concurrent reserver might
    try:
        reservation.release()
        assert not path.exists()
        fcntl.flock(racer, fcntl.LOCK_EX | fcntl.LOCK_NB)  # it can lock the orphan inode ...
        fresh = ports._try_lock(path)  # ... but whoever locks the path gets a new file, not shared with it
        assert fresh is not None and os.fstat(fresh).st_ino != os.fstat(racer).st_ino
        ports._unlink_and_unlock(path, fresh)
    finally:
        os.close(racer)


KILLED_HOLDER = """
import os
from pytest_sglang_runner import ports
print(" ".join(str(r.port) for r in ports.reserve_ports(5)), flush=True)
os._exit(0)  # no release: as if killed
"""


def test_files_of_a_killed_run_are_swept():
    child = subprocess.run([sys.executable, "-c", KILLED_HOLDER], capture_output=True, text=True, timeout=60)
    left = [ports.LOCK_DIR / f"{port}.lock" for port in map(int, child.stdout.split())]
    assert len(left) == 5 and all(path.exists() for path in left)
    assert ports.sweep_stale_lock_files() >= 5
    assert not any(path.exists() for path in left)
