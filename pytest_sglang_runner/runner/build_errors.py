"""What a failed build tells the user: the setting, its value and the fix, in one message.

SGLang's traceback for a bad model or a pool that does not fit runs to hundreds of lines from
deep inside its loader. `build_failure` reads the cause and answers in the kit's own options;
the original exception stays on ``__cause__``, which the fixtures print with ``-v``.
"""

from __future__ import annotations

import errno
import traceback

from ..errors import RunnerBuildError, SpecError
from ..options import RunnerSpec
from ..sglang_compat import process, shims
from .plan import BuildPlan


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (SGLang's messages can run to a page)."""
    lines = str(exc).strip().splitlines() or [""]
    text = lines[0] if len(lines[0]) <= 200 else lines[0][:197] + "..."
    return f"{type(exc).__name__}: {text}"


def _chain(exc: BaseException | None):
    """The exception, its cause or context, theirs, and so on (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def drop_frames(exc: BaseException) -> None:
    """Clear the locals of every frame in an exception chain (the text of the traceback stays)."""
    for link in _chain(exc):
        traceback.clear_frames(link.__traceback__)


def _innermost(exc: BaseException) -> BaseException:
    return list(_chain(exc))[-1]


def port_taken_by_another_process(exc: BaseException) -> bool:
    """Whether a build failed because a port was bound by someone else after it was reserved
    (a process outside the kit ignores the locks): a build with new ports will not meet it again."""
    return any(
        getattr(link, "errno", None) == errno.EADDRINUSE or "address already in use" in str(link).lower()
        for link in _chain(exc)
    )


def mem_fraction_flag(spec: RunnerSpec) -> str:
    fraction = spec.mem_fraction if spec.mem_fraction is not None else "(SGLang's default)"
    return f"--sglang-mem-fraction {fraction}"


def _origin(exc: BaseException) -> str:
    """Where the innermost exception was raised, when that is outside SGLang, torch and transformers
    (a user's model class): ``file:line``; else empty."""
    frames = traceback.extract_tb(_innermost(exc).__traceback__)
    if not frames:
        return ""
    frame = frames[-1]
    libraries = ("/sglang/", "/torch/", "/transformers/", "/safetensors/", "/pytest_sglang_runner/")
    return "" if any(part in frame.filename for part in libraries) else f" raised at {frame.filename}:{frame.lineno}"


def _unknown_model_type(config: dict) -> str | None:
    model_type = config.get("model_type")
    if not model_type:
        return None
    from transformers import CONFIG_MAPPING

    return None if model_type in CONFIG_MAPPING else str(model_type)


def build_failure(plan: BuildPlan, exc: BaseException) -> Exception:
    """The error to show for `exc`: a SpecError naming the option to change where one is to blame,
    else a RunnerBuildError naming the architecture, the SGLang version and SGLang's own message."""
    spec, device, config = plan.spec, plan.device, plan.config
    version = process.installed_version()
    names = plan.architectures
    architecture = ", ".join(names) or "the model"
    model_flag = f"--sglang-model {spec.model}"
    cause = one_line(_innermost(exc))
    refused = shims.refused_dtype(exc)
    if refused is not None and device == "cuda":
        dtype_flag = (
            f"--sglang-dtype {spec.dtype}"
            if spec.dtype != "auto"
            else f"--sglang-dtype auto (the checkpoint's {refused})"
        )
        return SpecError(
            f"{dtype_flag}: SGLang {version}'s CUDA kernels for {architecture} have no {refused} path "
            f"({cause}); use --sglang-dtype bfloat16 (or float16), or --sglang-device cpu for {refused}"
        )
    backend = shims.refused_attention_backend(exc)
    if backend is not None:
        flag = (
            f"--sglang-attention-backend {spec.attention_backend or backend + ' (the kit default on ' + device + ')'}"
        )
        return SpecError(
            f"{flag}: SGLang {version} refuses it for {architecture} ({cause}); use --sglang-attention-backend "
            "flashinfer (or fa3) on CUDA"
        )
    op = shims.cpu_less_op(exc)
    if op is not None and device == "cpu":
        return SpecError(
            f"--sglang-device cpu: this SGLang {version} install has no CPU kernel for {op} (its CUDA build), so a CPU "
            "runner cannot run; use --sglang-device cuda here, or run CPU tests where SGLang is installed without CUDA"
        )
    if shims.kv_pool_does_not_fit(exc):
        return SpecError(
            f"{mem_fraction_flag(spec)}: no GPU memory is left for the KV pool ({cause}); raise "
            "--sglang-mem-fraction (e.g. 0.5), or free the memory other processes hold on this GPU"
        )
    if any("safetensor" in type(link).__name__.lower() for link in _chain(exc)):
        return SpecError(f"{model_flag}: its weights could not be read ({cause}); copy or save the model again")
    model_type = _unknown_model_type(config)
    if model_type is not None:
        import transformers

        return SpecError(
            f"{model_flag}: config.json's model_type {model_type!r} is unknown to transformers {transformers.__version__}, "
            "which SGLang reads every config with; correct model_type, or install a transformers that has it"
        )
    unknown = [name for name in names if name not in process.supported_architectures()]
    if unknown:
        return SpecError(
            f"{model_flag}: SGLang {version} registers no model class {', '.join(unknown)} and its Transformers fallback "
            f"failed ({cause}); use an architecture SGLang supports, or register your class with SGLang's ModelRegistry"
        )
    return RunnerBuildError(
        f"building the SGLang runner failed: SGLang {version} could not build {architecture} "
        f"(model={spec.model} device={plan.device_label} dtype={plan.dtype} tp={spec.tp}): {cause}{_origin(exc)}"
    )
