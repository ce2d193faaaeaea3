"""Architectures beyond the decoders: BERT builds and matches HF; one SGLang cannot build says which and why."""

from __future__ import annotations

import json

import pytest
import torch

from pytest_sglang_runner.errors import SpecError
from pytest_sglang_runner.options import RunnerSpec
from pytest_sglang_runner.runner.build_errors import build_failure
from pytest_sglang_runner.runner.plan import BuildPlan, model_config, resolve_dtype
from pytest_sglang_runner.sglang_compat.process import installed_version

SMALL = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=128
)


def _save(model_class, config, directory):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model_class(config).save_pretrained(str(directory))
    return str(directory)


def test_bert_embeddings_match_hf_normalised_cls(runner_factory, tmp_path):
    """transformers 5 no longer writes position_embedding_type, which SGLang's BERT reads: the adapter fills it in."""
    from transformers import BertConfig, BertModel

    path = _save(BertModel, BertConfig(vocab_size=512, **SMALL), tmp_path / "bert")
    assert "position_embedding_type" not in json.loads((tmp_path / "bert" / "config.json").read_text())
    live = runner_factory.get(model=path)
    batch = [[101, 5, 6, 7, 102], [101, 9, 102]]
    ours = live.forward(batch).embeddings.float().cpu()
    reference = BertModel.from_pretrained(path).eval()
    tolerance = 1e-5 if live.device == "cpu" else 5e-3  # triton attention computes fp32 in TF32
    for row, ids in enumerate(batch):
        with torch.no_grad():
            cls = reference(torch.tensor([ids])).last_hidden_state[0, 0]
        assert (ours[row] - torch.nn.functional.normalize(cls, dim=-1)).abs().max().item() <= tolerance


def test_an_unknown_architecture_is_named_with_the_sglang_version(runner_factory, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = _save(LlamaForCausalLM, LlamaConfig(vocab_size=512, num_key_value_heads=2, **SMALL), tmp_path / "foo")
    config = json.loads((tmp_path / "foo" / "config.json").read_text())
    (tmp_path / "foo" / "config.json").write_text(json.dumps(dict(config, architectures=["FooBarForCausalLM"])))
    with pytest.raises(SpecError) as failure:
        runner_factory.get(model=path)
    message = str(failure.value)
    assert message.startswith(
        f"--sglang-model {path}: SGLang {installed_version()} registers no model class FooBarForCausalLM"
    )
    assert "Transformers fallback failed" in message
    assert not torch.distributed.is_initialized()


def test_an_attention_backend_sglang_refuses_for_the_architecture_is_a_usage_error(runner_factory):
    """SGLang refuses triton (the kit's default on CUDA) for hybrid models whose first layer may not
    be attention (Lfm2, NemotronH; seen on the H200): the option, SGLang's reason and the fix."""
    with pytest.raises(SpecError) as failure:
        runner_factory.get(
            model="tiny:Lfm2ForCausalLM", attention_backend="triton", max_total_tokens=1024, max_mamba_cache_size=16
        )
    message = str(failure.value)
    assert message.startswith(
        f"--sglang-attention-backend triton: SGLang {installed_version()} refuses it for Lfm2ForCausalLM"
    )
    assert (
        "first layer might not be an attention layer" in message
        and "use --sglang-attention-backend flashinfer" in message
    )
    assert not torch.distributed.is_initialized()


def test_gemma2_builds_through_the_config_translation_and_matches_hf(runner_factory, tmp_path):
    """SGLang's Gemma2 reads ``config.hidden_act``, which transformers 5 renamed (``hidden_activation``):
    the adapter translates it (`sglang_compat.config_gaps`), and on a plain CPU runner its final logit
    soft-cap, a Triton kernel in SGLang, runs as torch (`sglang_compat.cpu_ops`). Before both, the build
    failed in SGLang 0.5.17 and 0.5.23 alike with "'Gemma2Config' object has no attribute 'hidden_act'"."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    path = _save(
        Gemma2ForCausalLM,
        Gemma2Config(vocab_size=512, num_key_value_heads=2, head_dim=16, final_logit_softcapping=30.0, **SMALL),
        tmp_path / "gemma2",
    )
    assert "hidden_act" not in json.loads((tmp_path / "gemma2" / "config.json").read_text())
    dtype = "float32" if not torch.cuda.is_available() else "bfloat16"
    live = runner_factory.get(model=path, dtype=dtype)
    hf = runner_factory.hf_runner(runner_factory.spec_for(model=path, dtype=dtype))
    batch = [[2, 5, 6, 7, 8], [2, 9, 10]]
    ours = live.forward(batch).next_token_logits.float().cpu()
    theirs = hf.next_token_logits(batch).float().cpu()
    tolerance = 1e-4 if dtype == "float32" else 1e-1  # bfloat16: logits in steps of 1/16 near the cap
    assert (ours - theirs).abs().max().item() <= tolerance


def _plan(spec, directory, device: str) -> BuildPlan:
    """The plan a build of ``spec`` on ``device`` would have, without resolving devices or GPUs."""
    config = model_config(str(directory))
    return BuildPlan(spec, str(directory), device, (0,) * spec.tp, resolve_dtype(spec.dtype, config), config)


def test_a_kernel_without_the_dtype_becomes_a_usage_error_naming_bfloat16(tmp_path):
    """The message mapping alone, for sgl_kernel's float32 RMSNorm failure (the real one needs a GPU: test_decoder.py)."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    refusal = RuntimeError("rmsnorm(input, weight, eps, enable_pdl) failed to dispatch data type Float")
    error = build_failure(_plan(RunnerSpec(model=str(tmp_path), dtype="float32"), tmp_path, "cuda"), refusal)
    assert isinstance(error, SpecError)
    assert str(error).startswith("--sglang-dtype float32: SGLang ")
    assert "LlamaForCausalLM have no float32 path" in str(error) and "use --sglang-dtype bfloat16" in str(error)
    error = build_failure(_plan(RunnerSpec(model=str(tmp_path)), tmp_path, "cuda"), refusal)
    assert str(error).startswith("--sglang-dtype auto (the checkpoint's float32): ")


@pytest.mark.sglang_gpu(1)
def test_a_cpu_runner_on_a_cuda_machine_runs_or_is_a_usage_error(runner_factory, record_property):
    """SGLang 0.5.17's CUDA build has custom ops with no CPU kernel: the warm-up meets them at build time."""
    try:
        live = runner_factory.get(device="cpu")
    except SpecError as exc:
        record_property("outcome", str(exc))
        assert str(exc).startswith("--sglang-device cpu: ") and "use --sglang-device cuda" in str(exc)
        return
    record_property("outcome", "a CPU runner runs")
    assert live.forward([[0, 5, 6, 2]]).logits[0].isfinite().all()


def test_an_op_without_a_cpu_kernel_becomes_a_usage_error_naming_the_device(tmp_path):
    """The message mapping alone (the real failure needs SGLang's CUDA build on a GPU machine: the test above)."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["RobertaForMaskedLM"]}))
    missing = NotImplementedError(
        "Could not run 'sglang::store_cache' with arguments from the 'CPU' backend. This could be ..."
    )
    error = build_failure(_plan(RunnerSpec(model=str(tmp_path), device="cpu"), tmp_path, "cpu"), missing)
    assert isinstance(error, SpecError)
    assert str(error).startswith(
        f"--sglang-device cpu: this SGLang {installed_version()} install has no CPU kernel for sglang::store_cache"
    )


def test_a_kv_pool_that_does_not_fit_names_the_kits_memory_option(tmp_path):
    """The message mapping alone: with the kit's token cap, neither lent GPU nor the CPU made SGLang
    give up on the pool (SGLang 0.5.17 on an H100 built at mem_fraction=0.001), so the text is SGLang's."""
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    no_room = RuntimeError(
        "Not enough memory. Please try to increase --mem-fraction-static. Current value: mem_fraction_static=0.001"
    )
    error = build_failure(_plan(RunnerSpec(model=str(tmp_path), mem_fraction=0.001), tmp_path, "cuda"), no_room)
    assert isinstance(error, SpecError)
    assert str(error).startswith("--sglang-mem-fraction 0.001: no GPU memory is left for the KV pool")
    assert "raise --sglang-mem-fraction" in str(error)
