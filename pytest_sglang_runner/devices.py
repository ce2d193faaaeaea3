"""Which device, and which GPUs, a pytest process may use.

xdist worker ``gwK`` owns GPUs ``K*tp .. K*tp+tp-1``; the controller checks up front that the
machine has that many (more workers than GPUs is a usage error, not an out-of-memory hang).
torch is imported only when a decision needs it.
"""

from __future__ import annotations

import glob
import os

from .errors import SpecError

NO_CUDA = "--sglang-device cuda: no CUDA device is visible; use --sglang-device cpu (or auto)"


def xdist_worker_index() -> int:
    """0 for a plain run, K for xdist worker ``gwK``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def surely_no_gpu() -> bool:
    """True when no CUDA device can be visible, known without importing torch (seconds): CUDA
    hidden by ``CUDA_VISIBLE_DEVICES``, or no GPU device node at all (NVIDIA, ROCm's kfd, WSL's dxg)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return True
    return not (glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/kfd") or os.path.exists("/dev/dxg"))


def check_device_at_startup(requested_device: str) -> None:
    """``--sglang-device cuda`` on a machine without a GPU is a usage error before any test runs."""
    if requested_device == "cuda" and surely_no_gpu():
        raise SpecError(NO_CUDA)


def resolve_device(requested: str) -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    if requested == "cpu":
        return "cpu"
    gpus = cuda_device_count()
    if requested == "cuda" and gpus == 0:
        raise SpecError(NO_CUDA)
    return "cuda" if gpus else "cpu"


def gpu_ids_for_worker(worker_index: int, tp: int) -> list[int]:
    """This worker's GPUs; asking for more than the machine has is a SpecError, not a CUDA crash."""
    first = worker_index * tp
    visible = cuda_device_count()
    if first + tp > visible:
        raise SpecError(
            f"--sglang-tp {tp} on xdist worker {worker_index} needs GPUs {first}..{first + tp - 1}, but {visible} are visible"
        )
    return list(range(first, first + tp))


def check_gpus_suffice(requested_device: str, workers: int, tp: int) -> None:
    """Raise SpecError when ``workers`` xdist workers with ``tp`` GPUs each do not fit this machine."""
    if requested_device == "cpu":
        return
    if surely_no_gpu():  # no torch import (seconds) to learn it
        check_device_at_startup(requested_device)
        return
    gpus = cuda_device_count()
    if gpus == 0:
        resolve_device(requested_device)  # raises for an explicit cuda
        return
    if workers * tp > gpus:
        raise SpecError(
            f"-n {workers} with --sglang-tp {tp} needs {workers * tp} GPUs, but {gpus} are visible; "
            f"use -n {max(1, gpus // tp)} or fewer (each xdist worker owns its own GPUs)"
        )
