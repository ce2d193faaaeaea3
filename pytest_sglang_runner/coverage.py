"""Architecture coverage: a tiny checkpoint of one architecture built on the runner and compared
with HF by the kit's rules, ending as ``pass`` or as a named reason, never as a silent skip.

`check_architecture` runs one (prefill next-token logits within `PREFILL_ATOL` and `PREFILL_RTOL` in float32, the
logprob rules and, in float32, equal greedy tokens; in bfloat16, the logprob rules against HF in
float32 with tolerances of `BF16_NOISE_FACTOR` times HF's own bfloat16 error); `reason_of` names a failure from what SGLang
raised (an op without a CPU path, a config field transformers no longer writes, a disagreement
with HF); `signature` is its stable form (no paths, no numbers), which recorded outcomes are
compared by. The recorded outcomes are files per device and SGLang version (the repository keeps
them in ``docs/coverage/``: `load_recorded`, `save_recorded`);
``tests/test_coverage.py`` checks them in CI and ``docs/gen_coverage.py`` renders the table.

May import: the leaf modules, the models, the runner, references and comparisons.
"""

from __future__ import annotations

import json
import re
import time
import traceback
from pathlib import Path

from .compare import BFLOAT16_TOLERANCES, assert_logprobs_close, assert_tokens_equal, max_logprob_differences

PROMPTS = ["the film was", "the music and the film were very", "It", "this story is really good ! the acting"]
MAX_NEW_TOKENS = 8
# float32 prefill rule: |SGLang - HF| <= PREFILL_ATOL + PREFILL_RTOL * max |HF logit| (a longer
# reduction in another order moves a logit of 20 by ~1e-4); bfloat16 runs have the logprob rules alone.
PREFILL_ATOL, PREFILL_RTOL = 1e-4, 2e-5
# bfloat16 rule: SGLang in bfloat16 against HF in float32, each tolerance this many times the
# largest difference HF's own bfloat16 makes from its float32 on the same prompts (never below
# BFLOAT16_TOLERANCES). The tiny checkpoints' logits are scaled to a std of 4 for clear top-1
# margins, and bfloat16's error scales with them: HF's own bfloat16 is 0.3-0.5 off its float32
# on a tiny Llama (CPU), over the fixed 0.1/0.12, which the first H200 run failed 35 of 61 on.
BF16_NOISE_FACTOR = 2.0
# Runner settings for the sweep: a small KV pool, and a small state pool for hybrid (mamba,
# conv) models, whose default SGLang sizes from free memory (seconds of torch.zeros per build).
RUNNER_SETTINGS = dict(max_total_tokens=1024, max_mamba_cache_size=16)

_NO_CPU_KERNEL = re.compile(r"Could not run '([\w:.]+)' with arguments from the 'CPU' backend")
_KIT_NO_CPU_KERNEL = re.compile(r"no CPU kernel for ([\w:.]+)")
_BACKENDS_REQUIRED = re.compile(r"(\[[^]]*\]) (?:is required|attention backend)")
_MISSING_FIELD = re.compile(r"'(\w*Config\w*)' object has no attribute '(\w+)'")
_NOT_DEFINED = re.compile(r"NameError: name '(\w+)' is not defined")
_UNKNOWN_TENSOR = re.compile(r"KeyError: '([\w.]+\.weight)'")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((line for line in text.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {line}"[:400]


def _frames(exc: BaseException) -> list[str]:
    """The last SGLang frames of the innermost cause: where SGLang gave up."""
    inner = exc.__cause__ or exc
    frames = traceback.extract_tb(inner.__traceback__) if inner.__traceback__ else []
    inside = [f for f in frames if "/sglang/" in f.filename] or list(frames)
    return [f"{f.filename.split('site-packages/')[-1]}:{f.lineno} {f.name}" for f in inside[-3:]]


def reason_of(record: dict) -> str:
    """A failure in words: what SGLang lacks or misreads, or where it and HF disagree."""
    cause = record.get("cause") or record.get("reason", "")
    where = (record.get("where") or [""])[-1].split(" ")[-1]
    transformers = record.get("transformers") or _transformers()  # the version of the run that recorded it
    if cause.startswith("CompilationError"):  # Triton's first line is a source position; the build error says what
        return f"a Triton kernel of SGLang does not compile for this shape ({where}): {record['reason'].rsplit('): ', 1)[-1]}"
    if match := _NO_CPU_KERNEL.search(cause) or _KIT_NO_CPU_KERNEL.search(cause):
        return f"SGLang has no CPU kernel for {match.group(1)}"
    if "0 active drivers" in cause:
        return f"SGLang calls a Triton kernel on CPU ({where})"
    if "Found no NVIDIA driver" in cause:
        return f"SGLang calls CUDA while it sets the model up ({where})"
    if match := _BACKENDS_REQUIRED.search(cause):
        return f"SGLang requires one of the attention backends {match.group(1)}, none of which runs on CPU"
    if match := _NOT_DEFINED.search(cause):
        return f"SGLang calls {match.group(1)}, from a package not installed, with no torch fallback ({where})"
    if match := _MISSING_FIELD.search(cause):
        return f"SGLang reads the config field {match.group(2)}, which transformers {transformers} no longer writes"
    if "per-layer attribute" in cause:
        return f"transformers {transformers} made a config field per-layer ({cause.split(chr(39))[1]}); SGLang reads it globally"
    if match := _UNKNOWN_TENSOR.search(cause):
        return f"SGLang's weight loader does not know HF's tensor {match.group(1)} (their layouts differ)"
    if record.get("status") == "fail prefill":
        return "SGLang and HF disagree: " + record.get("reason", "").split(": ", 1)[-1].split("; per prompt")[0]
    if record.get("status") == "fail decode" and record.get("dtype") == "bfloat16":
        if "tolerances" in record:
            return "SGLang in bfloat16 is further from HF in float32 than twice HF's own bfloat16 error (logprob rules)"
        return (  # a run before BF16_NOISE_FACTOR: its verdict is not one on SGLang
            "SGLang and HF, both in bfloat16, differ by more than the fixed 0.1/0.12, which is less than "
            "bfloat16's own error on these checkpoints (recorded before the calibrated rule)"
        )
    if record.get("status") == "fail decode":
        return "SGLang and HF disagree in the greedy decode (logprob rules)"
    return cause


def _transformers() -> str:
    from importlib.metadata import version

    return version("transformers")


def signature(record: dict) -> str:
    """The failure's stable form: status and reason without paths or numbers, sets in order."""
    text = f"{record['status']}: {reason_of(record)}" if record["status"] != "pass" else "pass"
    text = re.sub(r"(/[\w.+-]+)+", "<path>", text)
    text = re.sub(r"\{([^{}]*)\}", lambda m: "{" + ", ".join(sorted(m.group(1).split(", "))) + "}", text)  # sets
    return re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "N", text)


def check_architecture(factory, architecture: str, dtype: str = "float32", **overrides) -> dict:
    """Build ``tiny:architecture`` on ``factory`` and compare it with HF; the outcome as a record
    (``status``: ``pass`` or ``fail <stage>``, stage: checkpoint, build, prefill, decode)."""
    record: dict = dict(architecture=architecture, dtype=dtype)
    settings = dict(RUNNER_SETTINGS, model=f"tiny:{architecture}", dtype=dtype, **overrides)
    stage, started = "checkpoint", time.perf_counter()
    try:
        spec = factory.spec_for(**settings)
        path = factory.model_path(spec)
        stamp = json.loads((Path(path) / "tiny.json").read_text())
        record["margins"] = {k: v for k, v in stamp.items() if "margin" in k or k == "logit_std"}
        stage = "build"
        live = factory.get(**settings)
        record["build_s"] = round(time.perf_counter() - started, 2)
        stage, hf = "prefill", factory.hf_runner(spec)
        ours = live.forward(PROMPTS).next_token_logits.float().cpu()
        theirs = hf.next_token_logits(PROMPTS).float().cpu()
        record["prefill_max_abs_diff"] = float((ours - theirs).abs().max())
        bound = PREFILL_ATOL + PREFILL_RTOL * float(theirs.abs().max())
        stage = "decode"  # before judging prefill: whether the logprob rules still pass is worth knowing
        ours_out = live.forward.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=5, ignore_eos=True)
        theirs_out = hf.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=5, ignore_eos=True)
        tolerances = {}
        if dtype == "bfloat16":
            exact = factory.hf_runner(factory.spec_for(**dict(settings, dtype="float32")))
            exact_out = exact.generate(PROMPTS, max_new_tokens=MAX_NEW_TOKENS, top_logprobs=5, ignore_eos=True)
            record["hf_bfloat16_error"] = max_logprob_differences(theirs_out, exact_out)
            tolerances = record["tolerances"] = bfloat16_tolerances(record["hf_bfloat16_error"])
            theirs_out = exact_out
        record["max_logprob_difference"] = max_logprob_differences(ours_out, theirs_out)
        assert_logprobs_close(ours_out, theirs_out, **tolerances)
        if dtype == "float32":
            assert_tokens_equal(ours_out, theirs_out)
            if not record["prefill_max_abs_diff"] <= bound:  # NaN fails too
                stage = "prefill"
                per_prompt = [round(float(d), 4) for d in (ours - theirs).abs().amax(dim=-1)]
                nan = "; SGLang's logits have NaN" if ours.isnan().any() else ""
                raise AssertionError(
                    f"prefill logits differ by up to {record['prefill_max_abs_diff']:.3g} (> {bound:.2g}); "
                    f"per prompt {per_prompt}{nan}"
                )
        record["status"] = "pass"
    except Exception as exc:
        record.update(status=f"fail {stage}", reason=first_line(exc), where=_frames(exc))
        if exc.__cause__ is not None:
            record["cause"] = first_line(exc.__cause__)
    record["seconds"] = round(time.perf_counter() - started, 2)
    return record


def bfloat16_tolerances(hf_error: dict[str, float]) -> dict[str, float]:
    """The logprob rules' tolerances for a bfloat16 run, from HF's own bfloat16 error (per phase)."""
    return {
        "prefill_tolerance": round(
            max(BFLOAT16_TOLERANCES["prefill_tolerance"], BF16_NOISE_FACTOR * hf_error["prompt"]), 4
        ),
        "decode_tolerance": round(
            max(BFLOAT16_TOLERANCES["decode_tolerance"], BF16_NOISE_FACTOR * hf_error["output"]), 4
        ),
    }


def recorded_path(directory: Path, device: str, version: str) -> Path:
    return Path(directory) / f"{device}-sglang-{version}.json"


def load_recorded(directory: Path, device: str, version: str) -> dict | None:
    """The recorded outcomes for this device and SGLang version, or None where none were recorded."""
    path = recorded_path(directory, device, version)
    return json.loads(path.read_text()) if path.is_file() else None


def save_recorded(directory: Path, records: list[dict], device: str, version: str, context: dict) -> Path:
    """Outcomes as the docs and CI read them: per architecture its status, reason and signature."""
    kept = {
        r["architecture"]: dict(
            status=r["status"],
            reason=reason_of(r) if r["status"] != "pass" else "",
            signature=signature(r),
            where=r.get("where", []),
        )
        for r in sorted(records, key=lambda r: r["architecture"])
    }
    path = recorded_path(directory, device, version)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(context, architectures=kept), indent=1) + "\n")
    return path
