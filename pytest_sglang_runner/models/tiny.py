"""Tiny random checkpoints for any decoder architecture that SGLang and transformers both know.

`shared_architectures()` lists the text-only ``...ForCausalLM`` class names in both the installed
SGLang's ``ModelRegistry`` and transformers' causal-LM auto mapping (whose config class builds the
model without sub-configs). `write_tiny_checkpoint(architecture, directory, **overrides)` writes one:
the kit's embedded decoder tokenizer (`embedded_llama.build_decoder_tokenizer`), config.json and
generation_config.json, float32 safetensors with seeded (seed 0) random weights.

Shapes: `TINY` is applied to every config field the architecture's default config has (hidden 256,
2 layers, 4 query heads and 2 KV heads of head_dim 64 (the head size SGLang's CUDA RoPE kernels serve), 4 experts of which 2 active with one dense
then one MoE layer where the family has the switch, small MLA ranks with K/V heads = query heads);
`ARCHITECTURE_OVERRIDES` fixes what one family needs on top (found by bench/arch_sweep.py); the
caller's ``overrides`` win over both. Per-layer lists the default config spells out for its own
depth (``layer_types``, ``mlp_layer_types``) are cut to the tiny depth keeping each kind, so a
hybrid keeps one layer of each. The config class is transformers' own (`config_class`): importing
SGLang replaces some entries of transformers' ``CONFIG_MAPPING`` with SGLang's classes.

Margins: random tiny models have near-uniform next-token distributions, where greedy tokens are
decided by noise and the rank rule is ill-conditioned. Weights are drawn wider
(``initializer_range`` 0.2, as tests/test_decoder.py does, which also separates MoE router scores)
and the LM head is then rescaled (tied or not), measured on HF's logits over `MARGIN_PROMPT`, until
the logits' standard deviation is `LOGIT_STD`: with the ~600-token vocabulary the median top-1
margin is then ~1 (logits), against float32 differences of < 1e-4 between SGLang and HF on CPU.
The smallest of the 12 measured margins can still be ~3e-3: fine for float32, not for bfloat16
(a later version should re-seed or raise the scale until the minimum clears a threshold).
The margins reached are written to ``tiny.json``, which also keys the cache.

May import: leaf modules of the kit (`embedded_llama`, `words`), transformers, torch; SGLang's
model registry only inside `shared_architectures` and `excluded_architectures`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..model_dir import causal_lm_classes, check_tiny_architecture
from .embedded_llama import build_decoder_tokenizer

SEED = 0
LOGIT_STD = 4.0
MARGIN_PROMPT = "the film was very good , but the music and the acting were"
FORMAT = 4  # bump when what is written changes: cached checkpoints are then rewritten

TINY = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,  # the head size SGLang's CUDA RoPE kernels serve (16 fails on the GPU for some)
    max_position_embeddings=256,
    initializer_range=0.2,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=3,
    # MoE: a few experts; layer 0 dense, layer 1 sparse where the family has the switch.
    num_experts=4,
    num_local_experts=4,
    n_routed_experts=4,
    moe_num_experts=4,
    num_experts_per_tok=2,
    moe_k=2,
    moe_topk=2,
    moe_intermediate_size=128,
    shared_expert_intermediate_size=256,
    n_shared_experts=1,
    first_k_dense_replace=1,
    n_group=1,
    topk_group=1,
    decoder_sparse_step=1,
    # MLA
    kv_lora_rank=128,
    q_lora_rank=128,
    qk_nope_head_dim=64,
    qk_rope_head_dim=64,
    v_head_dim=64,
    # linear attention / SSM families
    linear_num_key_heads=2,
    linear_num_value_heads=4,
    linear_key_head_dim=64,
    linear_value_head_dim=64,
    mamba_n_heads=8,  # mamba_expand (2) * hidden_size / mamba_d_head
    mamba_d_head=64,
    mamba_d_state=16,
    mamba_head_dim=64,
    n_groups=1,
    ssm_state_size=16,
    # GPT-2 style names the attribute_map does not cover everywhere
    n_positions=256,
    n_inner=512,
    rotary_dim=32,
)

# What one family needs on top of TINY (found by the sweep, bench/arch_sweep.py).
_NO_GQA = dict(num_key_value_heads=4)  # SGLang's loader for the family shards K and V as if num_kv_heads == num_heads
_LFM2_LAYERS = dict(layer_types=["conv", "full_attention"], full_attn_idxs=[1])
_YARN = dict(
    rope_type="yarn",
    rope_theta=10000.0,
    factor=4.0,
    original_max_position_embeddings=64,
    beta_fast=32.0,
    beta_slow=1.0,
    mscale=1.0,
    mscale_all_dim=1.0,
)
ARCHITECTURE_OVERRIDES: dict[str, dict] = {
    "OlmoForCausalLM": _NO_GQA,
    "OlmoeForCausalLM": _NO_GQA,
    "PhiForCausalLM": dict(
        _NO_GQA, intermediate_size=4 * TINY["hidden_size"]
    ),  # SGLang's Phi MLP is 4 * hidden_size wide
    "ZayaForCausalLM": dict(num_experts_per_tok=1),  # transformers: ZAYA supports num_experts_per_tok=1 only
    "Lfm2ForCausalLM": _LFM2_LAYERS,  # its default is attention only; a tiny one gets a conv layer too
    "Lfm2MoeForCausalLM": dict(_LFM2_LAYERS, num_dense_layers=1),  # its default layer_types is None
    "Mamba2ForCausalLM": dict(num_heads=8),
    # Defaults all full attention with a sliding_window set: SGLang then wants at least one SWA layer.
    "LagunaForCausalLM": dict(layer_types=["sliding_attention", "full_attention"]),
    "MellumForCausalLM": dict(layer_types=["sliding_attention", "full_attention"], sliding_window=64),  # SWA pool fits
    # SGLang's CPU rope for MLA is deepseek_yarn only (get_rope_cpu), as the real checkpoints use.
    "DeepseekV2ForCausalLM": dict(rope_parameters=_YARN),
    "DeepseekV3ForCausalLM": dict(rope_parameters=_YARN),
    "FalconH1ForCausalLM": dict(mamba_d_ssm=2 * TINY["hidden_size"], mamba_d_head=64),
    "GraniteMoeHybridForCausalLM": dict(layer_types=["linear_attention", "full_attention"]),  # default: all mamba
    "Gemma3nForCausalLM": dict(num_kv_shared_layers=0),  # hidden_size * expand == num_heads * head_dim
    "DbrxForCausalLM": dict(
        d_model=TINY["hidden_size"],
        n_heads=4,
        n_layers=2,
        max_seq_len=256,
        attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),  # HF's Dbrx reads both from here
        ffn_config=dict(ffn_hidden_size=TINY["intermediate_size"], moe_num_experts=4, moe_top_k=2),
    ),
}


def _has(config, key: str) -> bool:
    """Whether ``config`` has the field (a per-layer field's global read raises something else: present)."""
    try:
        getattr(config, key)
    except AttributeError:
        return False
    except Exception:
        return True
    return True


def _keep_kinds(values: list, layers: int) -> list:
    """``values`` (one per layer of the default depth) cut to ``layers``, keeping each distinct kind
    (a hybrid's attention and linear-attention layers, dense and sparse MLPs) where there is room."""
    cut = list(values[:layers])
    missing = [kind for kind in dict.fromkeys(values) if kind not in cut]
    for offset, kind in enumerate(missing[: max(layers - 1, 0)]):
        cut[layers - 1 - offset] = kind
    return cut


def config_class(architecture: str):
    """transformers' own config class for ``architecture`` (its causal-LM model_type's). Not read from
    ``CONFIG_MAPPING``: importing SGLang registers SGLang's config classes there for some model types
    (cohere2_moe, zaya), which build different models."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return getattr(transformers, CONFIG_MAPPING_NAMES[causal_lm_classes()[architecture]])


_NOT_TEXT = ("vision", "audio", "speech", "image", "video", "text_config")


def why_not_text_only(architecture: str) -> str | None:
    """None for a text-only decoder transformers builds from its default config; else why not."""
    import transformers

    if getattr(transformers, architecture, None) is None:
        return "transformers exports no class of that name"
    try:
        config = config_class(architecture)()
    except Exception as exc:
        return f"its default config does not build: {type(exc).__name__}: {exc}"
    parts = [name for name in getattr(config, "sub_configs", None) or {} if any(w in name for w in _NOT_TEXT)]
    return f"not text-only: sub-configs {', '.join(parts)}" if parts else None


def _registries() -> tuple[set[str], list[str]]:
    from sglang.srt.models.registry import ModelRegistry

    sglang = set(ModelRegistry.get_supported_archs())
    return sglang, sorted(name for name in causal_lm_classes() if name in sglang)


def shared_architectures() -> list[str]:
    """Sorted text-only ``...ForCausalLM`` names in both SGLang's ModelRegistry and transformers."""
    _, both = _registries()
    return [name for name in both if name.endswith("ForCausalLM") and why_not_text_only(name) is None]


def excluded_architectures() -> dict[str, str]:
    """Names in both registries' causal-LM lists that `shared_architectures` leaves out, with why."""
    _, both = _registries()
    return {
        name: "not a ...ForCausalLM class" if not name.endswith("ForCausalLM") else why_not_text_only(name)
        for name in both
        if name not in shared_architectures()
    }


def tiny_config(architecture: str, vocab_size: int, **overrides):
    """The architecture's config at tiny shapes (`TINY`, then `ARCHITECTURE_OVERRIDES`, then ``overrides``)."""
    cls = config_class(architecture)
    default = cls()
    wanted = dict(TINY, vocab_size=vocab_size)
    if _has(default, "kv_lora_rank"):  # MLA: HF repeats K/V num_attention_heads // num_key_value_heads times
        wanted["num_key_value_heads"] = wanted["num_attention_heads"]
    kwargs = {key: value for key, value in wanted.items() if _has(default, key)}
    chosen = {**ARCHITECTURE_OVERRIDES.get(architecture, {}), **overrides}
    # A field chosen under one name wins over TINY's value under an alias of it (attribute_map:
    # Mixtral's num_experts is num_local_experts), which the config would otherwise apply last.
    field = getattr(cls, "attribute_map", {}).get
    for key in chosen:
        for other in [k for k in kwargs if k != key and field(k, k) == field(key, key)]:
            del kwargs[other]
    kwargs.update(chosen)
    config = cls(architectures=[architecture], **kwargs)
    # Per-layer lists the default config spells out for its own depth: cut, keeping every kind.
    depth = getattr(default, "num_hidden_layers", None)
    layers = getattr(config, "num_hidden_layers", None)
    fixed = {}
    for key, value in vars(default).items():
        if key in kwargs or not isinstance(value, list) or not depth or len(value) != depth or not layers:
            continue
        cut = _keep_kinds(value, layers)
        if getattr(config, key, None) != cut:
            fixed[key] = cut
    return cls(architectures=[architecture], **kwargs, **fixed) if fixed else config


def _key(architecture: str, overrides: dict) -> str:
    import transformers

    recipe = [FORMAT, SEED, LOGIT_STD, TINY, ARCHITECTURE_OVERRIDES.get(architecture), architecture, overrides]
    text = json.dumps([recipe, transformers.__version__], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _margins(logits) -> dict:
    top = logits.float().topk(2, dim=-1).values
    gaps = (top[:, 0] - top[:, 1]).sort().values
    return dict(
        logit_std=round(float(logits.float().std()), 3),
        min_top1_margin=round(float(gaps[0]), 4),
        median_top1_margin=round(float(gaps[len(gaps) // 2]), 4),
    )


def _widen_lm_head(model, ids, target_std: float) -> dict:
    """Rescale the output embedding (tied or not) until the logits' std over ``ids`` is ``target_std``."""
    import torch

    head = model.get_output_embeddings()
    with torch.no_grad():
        for _ in range(3):
            logits = model(torch.tensor([ids])).logits[0]
            std = float(logits.float().std())
            if not std > 0 or abs(std / target_std - 1) < 0.05:
                break
            head.weight.mul_(target_std / std)
            if getattr(head, "bias", None) is not None:
                head.bias.mul_(target_std / std)
        return _margins(model(torch.tensor([ids])).logits[0])


def write_tiny_checkpoint(architecture: str, directory, **overrides) -> Path:
    """A tiny random float32 checkpoint of ``architecture`` in ``directory``, its recipe's key and
    margins in ``tiny.json``; returns the directory."""
    import torch
    import transformers
    from transformers import GenerationConfig

    directory = Path(directory)
    tokenizer = build_decoder_tokenizer(directory)
    config = tiny_config(architecture, len(tokenizer), **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = getattr(transformers, architecture)(config).float().eval()
    margins = _widen_lm_head(model, tokenizer(MARGIN_PROMPT)["input_ids"], LOGIT_STD)
    model.generation_config = GenerationConfig(bos_token_id=0, eos_token_id=1, pad_token_id=3)
    model.save_pretrained(str(directory), safe_serialization=True)
    stamp = dict(key=_key(architecture, overrides), architecture=architecture, overrides=overrides, **margins)
    (directory / "tiny.json").write_text(json.dumps(stamp, indent=1))
    return directory


def tiny_checkpoint(architecture: str, root: Path | None = None, **overrides) -> Path:
    """A tiny checkpoint of ``architecture`` in the kit's model cache (``root``, default the user's),
    written once per recipe, overrides and transformers version, file-locked across processes
    (xdist workers) and renamed into place complete; ``--sglang-model tiny:ARCH`` builds on it."""
    from ..paths import models_cache_dir
    from .embedded import bytes_key, write_once

    check_tiny_architecture("tiny_checkpoint", architecture)
    target = Path(root or models_cache_dir()) / bytes_key() / "tiny" / f"{architecture}-{_key(architecture, overrides)}"
    return write_once(
        target, lambda staging: write_tiny_checkpoint(architecture, staging, **overrides), done="tiny.json"
    )
