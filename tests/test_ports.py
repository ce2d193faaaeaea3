"""Port reservations hold across processes and are freed on release or process exit."""

import fcntl
import os
import subprocess
import sys

from pytest_sglang_runner import ports


def lock_is_held_elsewhere(port: int) -> bool:
    fd = os.open(ports.LOCK_DIR / f"{port}.lock", os.O_RDWR)
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
