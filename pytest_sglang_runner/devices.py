"""Which device, and which GPUs, a pytest process may use.

Without xdist the process owns every GPU: a TP-N runner takes GPUs ``0..N-1``. Under xdist each
worker owns a block of B GPUs, B the largest TP that the collected tests ask for and that fits
every worker (`GpuShare`): worker ``gwK`` owns ``K*B .. K*B+B-1``, and a TP-N runner takes the
first N of its block, so no two workers share a GPU whatever TP each builds. The controller checks the run's own TP against
the GPUs before any worker starts; each worker checks the TPs of its markers and factory
fixtures after its collection (`plugin.collection`). torch is imported only when a decision needs it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterable

from .errors import SpecError

NO_CUDA = "--sglang-device cuda: no CUDA device is visible; use --sglang-device cpu (or auto)"


def xdist_worker_index() -> int:
    """0 for a plain run, K for xdist worker ``gwK``."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    return int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0


def xdist_worker_count() -> int:
    """0 for a plain run, else the number of workers of this xdist run (as a worker sees it)."""
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "") if os.environ.get("PYTEST_XDIST_WORKER") else ""
    return int(count) if count.isdigit() else 0


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


def _visible(gpus: int) -> str:
    return f"{gpus} is visible" if gpus == 1 else f"{gpus} are visible"


def _missing_gpus(tp: int, visible: int) -> str:
    return f"--sglang-tp {tp} needs GPUs 0..{tp - 1}, but {_visible(visible)}"


def _too_few_gpus(workers: int, tp: int, visible: int) -> str:
    """What is wrong when ``workers`` workers of ``tp`` GPUs each do not fit, and the fix."""
    if tp > visible:  # no number of workers helps
        return _missing_gpus(tp, visible)
    return (
        f"-n {workers} with --sglang-tp {tp} needs {workers * tp} GPUs, but {_visible(visible)}; "
        f"use -n {visible // tp} or fewer (each xdist worker owns its own GPUs)"
    )


@dataclass(frozen=True)
class GpuShare:
    """How a run shares the GPUs: ``workers`` xdist workers (0: no xdist, the process owns them
    all), each owning ``per_worker`` GPUs, the largest TP its tests ask for (`gpus_per_worker`)."""

    workers: int = 0
    per_worker: int = 1

    def gpu_ids(self, worker_index: int, tp: int, visible: int) -> list[int]:
        """The GPUs of a TP-``tp`` runner on worker ``worker_index``; a range the machine lacks,
        or one that would reach into another worker's block, is a SpecError, not a CUDA crash."""
        if tp > visible:
            raise SpecError(_missing_gpus(tp, visible))
        if self.workers == 0:
            return list(range(tp))
        if self.workers * tp > visible:
            raise SpecError(_too_few_gpus(self.workers, tp, visible))
        if tp > self.per_worker:
            raise SpecError(
                f"--sglang-tp {tp} on xdist worker gw{worker_index}: each worker owns {self.per_worker} GPU(s), the "
                f"largest TP the collected tests ask for; give tp={tp} in the test's @pytest.mark.sglang or a "
                "factory fixture, so that collection counts it"
            )
        first = worker_index * self.per_worker
        if first + tp > visible:
            raise SpecError(
                f"--sglang-tp {tp} on xdist worker gw{worker_index} needs GPUs {first}..{first + tp - 1}, but "
                f"{_visible(visible)} (workers gw0..gw{self.workers - 1} own {self.per_worker} each)"
            )
        return list(range(first, first + tp))


def gpus_per_worker(workers: int, run_tp: int, asked_tps: Iterable[int], visible: int) -> int:
    """The block of GPUs each of ``workers`` workers owns: the largest TP that the run (``run_tp``,
    checked at startup) or a collected test asks for and that fits ``workers`` times into the
    ``visible`` GPUs. A TP that does not fit fails its own tests (`GpuShare.gpu_ids`) and takes
    no GPUs from the others."""
    return max([run_tp, *(tp for tp in asked_tps if workers * tp <= visible)])


_share: GpuShare | None = None  # this process's, set on an xdist worker after its collection


def share_gpus(share: GpuShare | None) -> GpuShare | None:
    """Make ``share`` this process's; returns the one it replaces (an inner pytest session
    puts it back when it ends)."""
    global _share
    previous, _share = _share, share
    return previous


def gpu_ids_for_worker(worker_index: int, tp: int) -> list[int]:
    """This worker's GPUs for a TP-``tp`` runner, by this process's `GpuShare`."""
    share = _share or GpuShare(xdist_worker_count())
    return share.gpu_ids(worker_index, tp, cuda_device_count())


def auto_workers(requested_device: str, tp: int, visible: int | None = None) -> int | None:
    """What ``-n auto`` means for runners on CUDA: as many workers as the ``visible`` GPUs (by
    default this machine's) hold TP-``tp`` groups, at least one; None where the runners run on
    the CPU, so that xdist's own count (one worker per CPU core) stands."""
    if requested_device == "cpu":
        return None
    if visible is None:
        visible = 0 if surely_no_gpu() else cuda_device_count()
    return max(1, visible // tp) if visible else None


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
        raise SpecError(_too_few_gpus(workers, tp, gpus))
