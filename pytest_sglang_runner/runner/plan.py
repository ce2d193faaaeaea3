"""A spec resolved once into a build plan: which model directory, device, GPUs, dtype and
attention backend, and the ServerArgs that follow from them.

Every later step reads the plan, never the spec's raw values: the runner, its TP peers, the HF
reference, a hosted Engine or server and the error messages all see the same decisions, and the
checkpoint's config.json is read once per plan.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import devices
from ..errors import SpecError
from ..model_dir import cached_hub_snapshot
from ..models import KIT_ARCHITECTURES
from ..options import RunnerSpec
from ..sglang_compat import server_args as sglang_server_args

DTYPES = ("float32", "float16", "bfloat16")


def model_config(model_path: str) -> dict:
    """The checkpoint's config.json, or {} where there is none to read."""
    try:
        return json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def resolve_model_path(spec: RunnerSpec, cache_root: Path, announce=None) -> str:
    """A local model directory: the embedded model (``announce`` is told when it is written), a
    tiny checkpoint, the given directory, or a cached hub snapshot."""
    if spec.uses_embedded_model:
        from ..models.embedded import ensure_embedded_model

        return str(ensure_embedded_model(cache_root, spec.model, announce))
    if spec.tiny_architecture:
        from ..models.tiny import tiny_checkpoint

        return str(tiny_checkpoint(spec.tiny_architecture, cache_root))
    if os.path.isdir(spec.model):
        return spec.model
    snapshot = cached_hub_snapshot(spec.model)
    if snapshot is None:  # options.py checked it; the cache changed since
        raise SpecError(
            f"--sglang-model {spec.model}: no longer in the local Hugging Face cache; pass a model directory"
        )
    return snapshot


def resolve_dtype(requested: str, config: dict) -> str:
    """``auto`` means the checkpoint's own dtype, float32 where it names none (SGLang's own
    ``auto`` would run a float32 checkpoint in float16, and HF loads it in float32)."""
    if requested != "auto":
        return requested
    saved = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return saved if saved in DTYPES else "float32"


@dataclass(frozen=True)
class BuildPlan:
    """What a build of ``spec`` runs on, decided once (`resolve`)."""

    spec: RunnerSpec
    model_path: str
    device: str  # "cpu" or "cuda"
    gpu_ids: tuple[int, ...]  # one per rank (zeros on CPU)
    dtype: str  # one of DTYPES
    config: dict = field(compare=False, repr=False)

    @classmethod
    def resolve(cls, spec: RunnerSpec, cache_root: Path, worker_index: int = 0, announce=None) -> BuildPlan:
        device = devices.resolve_device(spec.device)
        gpu_ids = devices.gpu_ids_for_worker(worker_index, spec.tp) if device == "cuda" else [0] * spec.tp
        model_path = resolve_model_path(spec, cache_root, announce)
        config = model_config(model_path)
        return cls(spec, model_path, device, tuple(gpu_ids), resolve_dtype(spec.dtype, config), config)

    @property
    def attention_backend(self) -> str:
        return self.spec.attention_backend or ("triton" if self.device == "cuda" else "torch_native")

    @property
    def device_label(self) -> str:
        """``cpu``, or ``cuda:`` and the GPU ids (the summary's wording)."""
        return "cpu" if self.device == "cpu" else f"cuda:{','.join(map(str, self.gpu_ids))}"

    @property
    def rank0_device(self) -> str:
        """Where rank 0's tensors live (and the HF reference runs): ``cpu`` or ``cuda:K``."""
        return "cpu" if self.device == "cpu" else f"cuda:{self.gpu_ids[0]}"

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @property
    def runs_kit_model(self) -> bool:
        return any(arch in KIT_ARCHITECTURES for arch in self.architectures)

    def server_arg(self, name: str) -> Any:
        """A ``--sglang-arg`` value typed against ServerArgs, or None when not given."""
        raw = dict(self.spec.server_args).get(name)
        return None if raw is None else sglang_server_args.typed_server_args({name: raw})[name]

    def server_args(self, dist_port: int, server_port: int) -> dict:
        """ServerArgs for a test runner: small KV pool, no prefix cache, no CUDA graphs, fixed ports."""
        spec = self.spec
        kwargs: dict[str, Any] = dict(
            model_path=self.model_path,
            tokenizer_path=self.model_path,
            device=self.device,
            dtype=self.dtype,
            tp_size=spec.tp,
            attention_backend=self.attention_backend,
            max_total_tokens=spec.max_total_tokens,
            disable_radix_cache=True,
            disable_cuda_graph=True,
            nccl_port=dist_port,
            port=server_port,
            random_seed=0,
            skip_server_warmup=True,
        )
        if self.device == "cpu":
            kwargs["sampling_backend"] = "pytorch"
        if spec.mem_fraction is not None:
            kwargs["mem_fraction_static"] = spec.mem_fraction
        if self.runs_kit_model:
            kwargs["is_embedding"] = True
        if spec.attention_backend:
            sglang_server_args.check_attention_backend(spec.attention_backend)
        kwargs.update(sglang_server_args.typed_server_args(dict(spec.server_args)))
        return kwargs
