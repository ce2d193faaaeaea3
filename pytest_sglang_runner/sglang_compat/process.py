"""The process SGLang runs in: environment read at import, the import itself, and which API it has."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import logging
import os

from ..errors import UnsupportedSGLang

SUPPORTED_VERSIONS = {
    "0.5.17": "runner-builds-groups",
    "0.5.23": "caller-builds-groups",
}

# The runner's modules plus those it would otherwise import lazily inside a build.
_IMPORTED_ON_A_CLEAN_STACK = (
    "sglang.srt.server_args",
    "sglang.srt.configs.model_config",
    "sglang.srt.distributed.bootstrap",
    "sglang.srt.model_executor.model_runner",
    "sglang.srt.model_executor.forward_batch_info",
    "sglang.srt.managers.schedule_batch",
    "sglang.srt.utils.torch_memory_saver_adapter",
    "sglang.srt.layers.quantization.mxfp4",
    "sglang.srt.layers.attention.dsa.dsa_indexer",
    "sglang.srt.layers.attention.torch_native_backend",
    "sglang.srt.layers.attention.triton_backend",
)


# Types of SGLang's SWIG-built dependencies (SWIG < 4.3) warn at their import and again at the
# interpreter's exit (``sys:1: DeprecationWarning: builtin type swigvarlink has no __module__
# attribute``): nothing a user can act on. As a pytest ``filterwarnings`` line, and as a filter.
SWIG_WARNING_FILTER = "ignore:builtin type swig:DeprecationWarning"


def ignore_swig_warnings() -> None:
    """Install the filter process-wide; after pytest's last ``catch_warnings`` (which would drop
    it again), so that it still holds when the interpreter exits."""
    import warnings

    warnings.filterwarnings("ignore", message="builtin type swig", category=DeprecationWarning)


def prepare_process(device: str) -> None:
    """Environment SGLang reads once, at import; call before the first SGLang import."""
    if device == "cpu":
        # A CUDA build of torch on a GPU-less machine makes SGLang try PyNccl for TP>1.
        os.environ.setdefault("SGLANG_NCCL_SO_PATH", "/nonexistent")
        # The first TP>1 forward would torch.compile a helper for 10-20 s on CPU, same outputs.
        os.environ.setdefault("TORCH_COMPILE_DISABLE", "1")
    # Keep SGLang on its plain CPU path unless the user chose its Xeon engine explicitly.
    os.environ.setdefault("SGLANG_USE_CPU_ENGINE", "0")


@contextlib.contextmanager
def cpu_threads_bind(device: str, tp: int):
    """While a CPU rank of a TP>1 runner is built: one core range per rank (SGLang reads
    ``SGLANG_CPU_OMP_THREADS_BIND`` then, and 0.5.17 wants exactly ``tp`` ranges, so a value left
    behind would break the next TP=1 build or a child pytest). A user's own setting is kept."""
    name = "SGLANG_CPU_OMP_THREADS_BIND"
    if device != "cpu" or tp == 1 or name in os.environ:
        yield
        return
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // tp)
    groups = [cores[(rank * share) % len(cores) : (rank * share) % len(cores) + share] for rank in range(tp)]
    os.environ[name] = "|".join(f"{g[0]}-{g[-1]}" for g in groups)
    try:
        yield
    finally:
        os.environ.pop(name, None)


def uses_cpu_engine() -> bool:
    """SGLang's Xeon engine (``SGLANG_USE_CPU_ENGINE=1``, needs sgl_kernel's CPU build) instead of its plain CPU path."""
    return os.environ.get("SGLANG_USE_CPU_ENGINE", "0") == "1"


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        raise UnsupportedSGLang(_not_installed()) from None


def _not_installed() -> str:
    import sys

    return (
        f"SGLang is not installed for {sys.executable}; pip install 'sglang=={list(SUPPORTED_VERSIONS)[-1]}' "
        f"(supported: {', '.join(SUPPORTED_VERSIONS)}), or skip the runner tests with --sglang-skip"
    )


def detect_api() -> str:
    """Which bootstrap order the installed SGLang needs."""
    from sglang.srt.distributed import bootstrap
    from sglang.srt.model_executor.model_runner import ModelRunner

    runner_params = inspect.signature(ModelRunner.__init__).parameters
    if hasattr(bootstrap, "init_parallel_runtime") and "ps" not in runner_params:
        return "caller-builds-groups"
    if "ps" in runner_params and hasattr(bootstrap, "init_torch_distributed"):
        return "runner-builds-groups"
    supported = ", ".join(f"{v} ({api})" for v, api in SUPPORTED_VERSIONS.items())
    raise UnsupportedSGLang(
        f"SGLang {installed_version()} has a ModelRunner bootstrap this kit does not know; supported: {supported}. "
        "Install one of those (pip install 'sglang==0.5.23') or a newer pytest-sglang-runner."
    )


_imported = False


def sglang_imported() -> bool:
    """Whether `import_sglang` has run in this process (the first build pays its seconds)."""
    return _imported


def import_sglang() -> None:
    """Import SGLang's runner modules on a thread of their own, once.

    Some SGLang modules keep a failed optional import's exception in a module global. Its
    traceback holds every frame of the importing stack; imported from the build's own stack,
    that pins the first runner (weights, KV pool) for the life of the process. A fresh
    thread's stack holds nothing of ours.
    """
    global _imported
    if _imported:
        return
    errors: list[BaseException] = []

    def load() -> None:
        try:
            for name in _IMPORTED_ON_A_CLEAN_STACK:
                try:
                    importlib.import_module(name)
                except ImportError:
                    if not name.startswith("sglang.srt.layers"):
                        raise
            from sglang.srt.models.registry import ModelRegistry

            ModelRegistry.get_supported_archs()  # imports every model module now
        except BaseException as exc:  # re-raised on the caller's thread
            errors.append(exc)

    import threading

    thread = threading.Thread(target=load, name="sglang-import")
    thread.start()
    thread.join()
    if errors:
        error = errors[0]
        if isinstance(error, ModuleNotFoundError) and error.name == "sglang":
            raise UnsupportedSGLang(_not_installed()) from None
        raise error
    _freeze_the_imported_heap()
    drop_torch_trace_records()
    _imported = True


def _drop(record: logging.LogRecord) -> bool:
    return False


def drop_torch_trace_records() -> None:
    """torch's ``torch.__trace`` logger writes empty DEBUG records for tlparse (hundreds in a TP
    build) and never propagates; pytest attaches its log capture to every logger that does not
    propagate, so with torch imported before a test starts they all land in its captured log.
    Without a trace directory (``TORCH_TRACE``, ``TORCH_DTRACE``, ``TORCH_COMPILE_DEBUG=1``)
    nothing reads them: dropped at the logger."""
    if os.environ.get("TORCH_TRACE") or os.environ.get("TORCH_DTRACE") or os.environ.get("TORCH_COMPILE_DEBUG") == "1":
        return
    trace = logging.getLogger("torch.__trace")
    if _drop not in trace.filters:
        trace.addFilter(_drop)


def _freeze_the_imported_heap() -> None:
    """Take what the import made (millions of objects, alive as long as the process) out of the
    cyclic collector's sight. Every full collection, the kit's at teardown and SGLang's when it
    sizes the KV pool at each build, then scans only what came later: 0.5 s less per collection
    on CPU, a TP=1 build and teardown of the embedded model 1.2 s -> 0.3 s. Reference counting
    still frees everything; only garbage cycles that exist now are kept, so collect them first."""
    import gc

    gc.collect()
    gc.freeze()


def supported_architectures() -> set[str]:
    """Model classes this SGLang registers (the kit's own included, once registered)."""
    from sglang.srt.models.registry import ModelRegistry

    return set(ModelRegistry.get_supported_archs())
