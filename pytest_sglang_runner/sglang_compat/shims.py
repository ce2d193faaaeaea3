"""Where a plain SGLang install cannot run a model as it stands, and what the kit does about it.

* **Plain CPU runners.** A PyPI install runs on CPU with ``device="cpu"`` and
  ``SGLANG_USE_CPU_ENGINE=0`` (the Xeon engine needs a CPU build of sgl_kernel). SGLang's
  ``is_cpu()`` is false there, so layers pick their CUDA-era fallback kernels: every
  ``RotaryEmbedding`` imports vLLM's ``rotary_embedding`` (``No module named 'vllm'``).
  `cpu_native_layers` makes those layers take SGLang's own torch path (``forward_native``)
  while a CPU runner is built, and puts the flags back afterwards.
  The same call installs `cpu_ops` once per process: torch stand-ins for functions SGLang has
  only as Triton/CUDA kernels (MoE gates and experts, the logit soft-cap, causal conv1d and the
  Mamba2 scan, attention sinks and MLA on torch_native; the list is in `cpu_ops`), each
  dispatching on the tensor's device so a CUDA runner in the same process keeps SGLang's kernels.
  A further flag, Ernie 4.5's ``_is_cpu``, squeezes its router bias the way the CPU top-k needs.
* **Config attributes transformers 5 dropped or moved** that SGLang's model classes still read
  (``position_embedding_type`` for BERT and RoBERTa, Gemma2's ``hidden_act``, DeepSeek's router
  fields, Qwen3-Next's ``full_attention_interval``, ...): `config_gaps.fill_config_gaps` (re-exported
  here) sets them where absent.
* **A hybrid model's conv-state cache in bfloat16 whatever ``--dtype`` says.** SGLang keeps the
  mamba/short-conv state in ``SGLANG_MAMBA_CONV_DTYPE`` (default bfloat16): a float32 LFM2 decode
  then drifts from HF by ~3e-2 in logprob. `float32_conv_state` sets it to float32 while a
  float32 runner is built (unless the user set it).
* **Kernels without a dtype.** sgl_kernel's CUDA RMSNorm has no float32 kernel ("rmsnorm(...)
  failed to dispatch data type Float"); `refused_dtype` reads that from an error, so the build
  can name ``--sglang-dtype bfloat16`` instead of showing SGLang's traceback.
* **A rendezvous open to the network.** torch's TCPStore server (the dist port's rendezvous, which
  SGLang starts through ``init_process_group("tcp://127.0.0.1:PORT")``) binds every interface
  (``::``) whatever host it is given. `loopback_rendezvous` hands it a socket already bound to
  127.0.0.1 (TCPStore's ``master_listen_fd``) while a runner is built.
* **Ops without a CPU kernel.** SGLang 0.5.17 installed on a CUDA machine registers some custom
  ops for CUDA only ("Could not run 'sglang::store_cache' with arguments from the 'CPU'
  backend"): a CPU runner builds but cannot run. `cpu_less_op` reads that from an error.
* **Advice in SGLang's own flags.** A KV pool that does not fit fails with "increase
  --mem-fraction-static", a server flag the kit spells ``--sglang-mem-fraction``;
  `kv_pool_does_not_fit` reads that from an error.
* **torch's default dtype left behind.** SGLang 0.5.17 does not restore it when its loader
  raises; `default_dtype_kept` does, around every build.
"""

from __future__ import annotations

import contextlib
import importlib
import re
from typing import Callable, Iterator

from .config_gaps import _DROPPED_CONFIG_DEFAULTS, fill_config_gaps  # noqa: F401  (re-exported)
from .process import uses_cpu_engine

# (module, flag): module-level "am I on CPU" flags that decide, when a layer is built, between
# SGLang's torch implementation and a CUDA/vLLM fallback kernel.
_CPU_LAYER_FLAGS = (
    ("sglang.srt.layers.rotary_embedding.base", "_is_cpu"),
    # Ernie 4.5 MoE squeezes its (1, experts) router correction bias to 1-D only on CPU/NPU; the
    # torch-native top-k cannot take it 2-D ("Index tensor must have the same number of dimensions").
    ("sglang.srt.models.ernie4", "_is_cpu"),
)

_DISPATCH_FAILURE = re.compile(r"failed to dispatch data type (\w+)")
_NO_CPU_KERNEL = re.compile(r"Could not run '([\w:.]+)' with arguments from the 'CPU' backend")
_BACKEND_REFUSED = re.compile(r"does not support (\w+) attention backend")
_KV_POOL_TOO_SMALL = re.compile(r"(?:increase|raise) --mem-fraction-static", re.IGNORECASE)
_TORCH_DTYPE_NAMES = {"Float": "float32", "Half": "float16", "BFloat16": "bfloat16", "Double": "float64"}


def use_cpu_native_layers(device: str) -> list[tuple]:
    """From now on, layers built in this process choose SGLang's native torch implementations
    (plain CPU only); returns what was changed, for `cpu_native_layers` to put back. Also installs
    `cpu_ops`' torch stand-ins (once per process, never undone: they dispatch on the device)."""
    if device != "cpu" or uses_cpu_engine():
        return []
    from .cpu_ops import install_cpu_ops

    install_cpu_ops()
    saved = []
    for module_name, flag in _CPU_LAYER_FLAGS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if hasattr(module, flag):
            saved.append((module, flag, getattr(module, flag)))
            setattr(module, flag, True)
    return saved


@contextlib.contextmanager
def cpu_native_layers(device: str):
    """While a plain-CPU runner is built, its layers choose SGLang's native torch implementations."""
    saved = use_cpu_native_layers(device)
    try:
        yield
    finally:
        for module, flag, value in saved:
            setattr(module, flag, value)


_CONV_STATE_DTYPE_ENV = "SGLANG_MAMBA_CONV_DTYPE"


@contextlib.contextmanager
def float32_conv_state(dtype: str | None) -> Iterator[None]:
    """While a float32 runner is built, SGLang's mamba conv-state cache is float32 too (SGLang's
    default, bfloat16, is independent of the model dtype); a value the user set is kept."""
    import os

    if str(dtype) not in ("float32", "torch.float32") or _CONV_STATE_DTYPE_ENV in os.environ:
        yield
        return
    os.environ[_CONV_STATE_DTYPE_ENV] = "float32"
    try:
        yield
    finally:
        os.environ.pop(_CONV_STATE_DTYPE_ENV, None)


def _search_chain(exc: BaseException | None, pattern: re.Pattern) -> re.Match | None:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        match = pattern.search(str(exc))
        if match:
            return match
        exc = exc.__cause__ or exc.__context__
    return None


def refused_dtype(exc: BaseException) -> str | None:
    """The dtype a kernel refused to run ("failed to dispatch data type Float" -> "float32"), or None."""
    match = _search_chain(exc, _DISPATCH_FAILURE)
    return _TORCH_DTYPE_NAMES.get(match.group(1), match.group(1)) if match else None


def refused_attention_backend(exc: BaseException) -> str | None:
    """The attention backend SGLang refuses for this architecture ("Lfm2ForCausalLM does not
    support triton attention backend, as the first layer might not be an attention layer"), or None."""
    match = _search_chain(exc, _BACKEND_REFUSED)
    return match.group(1) if match else None


def cpu_less_op(exc: BaseException) -> str | None:
    """The custom op this SGLang build registers without a CPU kernel (e.g. "sglang::store_cache"), or None."""
    match = _search_chain(exc, _NO_CPU_KERNEL)
    return match.group(1) if match else None


def kv_pool_does_not_fit(exc: BaseException) -> bool:
    """Whether SGLang gave up because the memory fraction leaves no room for the KV pool."""
    return _search_chain(exc, _KV_POOL_TOO_SMALL) is not None


def use_loopback_rendezvous() -> Callable[[], None]:
    """From now on, a rank-0 TCPStore for a loopback address listens on 127.0.0.1 only; returns
    the undo."""
    import socket
    import sys

    import torch.distributed  # noqa: F401  (loads the rendezvous module)

    rendezvous = sys.modules["torch.distributed.rendezvous"]
    original = rendezvous._create_c10d_store

    def create(hostname, port, rank, world_size, timeout, use_libuv=True):
        if rank != 0 or hostname not in ("127.0.0.1", "localhost"):
            return original(hostname, port, rank, world_size, timeout, use_libuv)
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(128)
        except OSError:
            listener.close()
            raise
        return rendezvous.TCPStore(
            host_name="127.0.0.1",
            port=port,
            world_size=world_size,
            is_master=True,
            timeout=timeout,
            multi_tenant=True,
            master_listen_fd=listener.detach(),
            use_libuv=use_libuv,
        )

    rendezvous._create_c10d_store = create

    def undo() -> None:
        rendezvous._create_c10d_store = original

    return undo


@contextlib.contextmanager
def loopback_rendezvous():
    """While active, a rank-0 TCPStore for a loopback address listens on 127.0.0.1 only."""
    undo = use_loopback_rendezvous()
    try:
        yield
    finally:
        undo()


@contextlib.contextmanager
def default_dtype_kept() -> Iterator[None]:
    """torch's default dtype as it was before a build, whatever the build did. SGLang 0.5.17's
    ``set_default_torch_dtype`` restores it only when the loader returns: a build that fails inside
    the loader (a broken checkpoint, a model class that raises) left the model's dtype as every
    later test's default (``torch.zeros(3)`` in bfloat16)."""
    import torch

    dtype = torch.get_default_dtype()
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
