"""Which GPUs each xdist worker owns (`devices.GpuShare`): one block per worker, as large as the
largest TP its tests ask for; a TP that does not fit fails its tests with the ``-n`` that would.
The rules take GPU counts, so they are checked here on any machine."""

import pytest

from pytest_sglang_runner import devices
from pytest_sglang_runner.devices import GpuShare
from pytest_sglang_runner.errors import SpecError


@pytest.mark.parametrize(
    "share, worker, tp, visible, expected",
    [
        (GpuShare(), 0, 1, 1, [0]),  # no xdist: the process owns every GPU
        (GpuShare(), 0, 2, 4, [0, 1]),
        (GpuShare(2, 1), 1, 1, 2, [1]),
        (GpuShare(2, 2), 0, 1, 4, [0]),  # a TP-1 runner takes the first GPU of its worker's block
        (GpuShare(2, 2), 1, 1, 4, [2]),
        (GpuShare(2, 2), 1, 2, 4, [2, 3]),
        (GpuShare(3, 2), 2, 2, 8, [4, 5]),
    ],
)
def test_each_worker_owns_a_block_as_large_as_the_largest_tp(share, worker, tp, visible, expected):
    assert share.gpu_ids(worker, tp, visible) == expected


def test_workers_never_share_a_gpu_whatever_tp_each_builds():
    """-n 2 on four GPUs with TP-1 and TP-2 tests: each GPU belongs to one worker."""
    share = GpuShare(2, devices.gpus_per_worker(2, 1, {2}, visible=4))
    owned = [{gpu for tp in (1, 2) for gpu in share.gpu_ids(worker, tp, 4)} for worker in (0, 1)]
    assert owned == [{0, 1}, {2, 3}]


@pytest.mark.parametrize(
    "workers, run_tp, asked, visible, expected",
    [
        (2, 1, set(), 2, 1),
        (2, 1, {2}, 4, 2),
        (2, 2, set(), 4, 2),  # the run's own TP, checked at startup
        (2, 1, {4}, 4, 1),  # TP 4 does not fit twice: it fails its own tests, the block stays 1
        (2, 1, {2, 4}, 4, 2),
        (1, 1, {4}, 4, 4),
    ],
)
def test_the_block_is_the_largest_tp_that_fits_every_worker(workers, run_tp, asked, visible, expected):
    assert devices.gpus_per_worker(workers, run_tp, asked, visible) == expected


@pytest.mark.parametrize(
    "share, worker, tp, visible, expected",
    [
        (GpuShare(), 0, 2, 1, "--sglang-tp 2 needs GPUs 0..1, but 1 is visible"),
        (GpuShare(2, 1), 1, 4, 2, "--sglang-tp 4 needs GPUs 0..3, but 2 are visible"),
        (
            GpuShare(2, 1),
            0,
            4,
            4,
            "-n 2 with --sglang-tp 4 needs 8 GPUs, but 4 are visible; use -n 1 or fewer (each xdist worker owns its own GPUs)",
        ),
        (
            GpuShare(2, 1),
            1,
            2,
            4,
            "--sglang-tp 2 on xdist worker gw1: each worker owns 1 GPU(s), the largest TP the collected tests ask "
            "for; give tp=2 in the test's @pytest.mark.sglang or a factory fixture, so that collection counts it",
        ),
        (
            GpuShare(2, 2),
            2,
            1,
            4,
            "--sglang-tp 1 on xdist worker gw2 needs GPUs 4..4, but 4 are visible (workers gw0..gw1 own 2 each)",
        ),
    ],
)
def test_gpus_a_worker_lacks_are_a_spec_error_naming_the_fix(share, worker, tp, visible, expected):
    with pytest.raises(SpecError) as raised:
        share.gpu_ids(worker, tp, visible)
    assert str(raised.value) == expected


@pytest.mark.parametrize(
    "device, tp, visible, expected",
    [
        ("auto", 1, 8, 8),
        ("cuda", 2, 8, 4),
        ("auto", 2, 3, 1),
        ("cuda", 4, 2, 1),  # the GPU check then says --sglang-tp 4 needs GPUs 0..3
        ("auto", 1, 0, None),  # runners on the CPU: xdist's own count
        ("cpu", 1, 8, None),
    ],
)
def test_n_auto_means_as_many_workers_as_the_gpus_hold(device, tp, visible, expected):
    assert devices.auto_workers(device, tp, visible) == expected


def test_the_worker_count_is_xdists_on_a_worker_and_0_without(monkeypatch):
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    assert devices.xdist_worker_count() == 0
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw2")
    assert devices.xdist_worker_count() == 3 and devices.xdist_worker_index() == 2


FOUR_GPUS = """
from pytest_sglang_runner import devices

# No GPU here: the kit counts four (the GPU rules run, no runner is built).
devices.surely_no_gpu = lambda: False
devices.cuda_device_count = lambda: 4
"""

TP_TESTS = """
import pytest

from pytest_sglang_runner import devices


@pytest.mark.parametrize("i", range(2))
def test_default_config(runner_factory, i):
    k = runner_factory.worker_index
    assert devices.gpu_ids_for_worker(k, 1) == [2 * k]


@pytest.mark.sglang(tp=2)
def test_tp2(runner_factory):
    k = runner_factory.worker_index
    assert devices.gpu_ids_for_worker(k, 2) == [2 * k, 2 * k + 1]


@pytest.mark.sglang(tp=4)
def test_tp4(sglang_live):
    pass
"""


def test_markers_tp_sets_each_workers_gpus_and_a_tp_that_does_not_fit_fails_its_test(pytester):
    """-n 2 on four GPUs: a tp=2 marker gives each worker two GPUs; tp=4 fits no two workers and
    fails its test alone, naming the marker and the -n that fits."""
    pytester.makeconftest(FOUR_GPUS)
    pytester.makepyfile(test_tp=TP_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*-n 2 with --sglang-tp 4 needs 8 GPUs, but 4 are visible; use -n 1 or fewer "
            "(each xdist worker owns its own GPUs) [[]@pytest.mark.sglang(tp=4)[]]"
        ]
    )


def auto_workers_of(pytester, *args) -> str:
    """What ``-n auto`` resolves to (``--collect-only``: no worker starts)."""
    pytester.makeconftest("def pytest_configure(config):\n    print('WORKERS', config.option.numprocesses)\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-s", "--collect-only", "-n", "auto", *args)
    return next(line for line in result.outlines if line.startswith("WORKERS"))


def test_n_auto_counts_the_gpus_on_cuda_and_leaves_xdists_count_otherwise(pytester, monkeypatch):
    monkeypatch.setattr(devices, "surely_no_gpu", lambda: False)
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 4)
    monkeypatch.delenv("PYTEST_XDIST_AUTO_NUM_WORKERS", raising=False)
    assert auto_workers_of(pytester, "--sglang-tp=2") == "WORKERS 2"
    assert auto_workers_of(pytester, "--sglang-device=cpu") == auto_workers_of(pytester, "-p", "no:sglang_runner")
    monkeypatch.setenv("PYTEST_XDIST_AUTO_NUM_WORKERS", "3")
    assert auto_workers_of(pytester) == "WORKERS 3"
