"""The same checkpoint in HF transformers, with the runner's method names and result types.

`HFRunner.generate` is transformers' own greedy ``generate``, one prompt at a time (no padding,
so nothing but the model differs from the runner), returning `generation.Generation` like
`Forward.generate`: prompt logprobs from one forward over the prompt, output logprobs from the
raw logits ``generate`` returns, both ``log_softmax`` in float32. It stops at the union of the
EOS ids in config.json and generation_config.json, as SGLang does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .results import Generation, Sampling, TokenLogprob, check_arguments
from .tokens import Tokenized

_DTYPES = {"float32", "float16", "bfloat16"}


def hf_model_class(model_path: str, default: str = "AutoModelForCausalLM"):
    """The transformers class the checkpoint's config names (its first architecture), else ``default``."""
    import transformers

    try:
        architectures = json.loads((Path(model_path) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError):
        architectures = []
    named = getattr(transformers, architectures[0], None) if architectures else None
    return named if named is not None else getattr(transformers, default)


def _ids(value) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


def _logprobs(logits, top_logprobs: int):
    """Per row of ``logits``: (the row's log_softmax in float32, its top-k as {id: logprob})."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if top_logprobs:
        values, ids = logprobs.topk(top_logprobs, dim=-1)
        tops = [dict(zip(row_ids.tolist(), row_values.tolist())) for row_ids, row_values in zip(ids, values)]
    else:
        tops = [{} for _ in range(logprobs.shape[0])]
    return logprobs, tops


def _float32_logits(head, inputs, output):
    """Forward hook: the LM head's output recomputed in float32 (tied weights stay as they are)."""
    import torch

    bias = head.bias.float() if getattr(head, "bias", None) is not None else None
    return torch.nn.functional.linear(inputs[0].float(), head.weight.float(), bias)


class HFRunner(Tokenized):
    """A transformers model of ``model_path`` in eval mode (``dtype`` and ``device`` as given).

    ``fp32_lm_head=True`` computes the logits in float32 from the model's own hidden states, as
    SGLang's ``enable_fp32_lm_head`` does: in bfloat16 a logit of 8 is rounded to steps of 0.0625,
    as large as the tolerance rule's, so comparisons of half-precision models want it on both sides.
    """

    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu", fp32_lm_head: bool = False):
        import torch

        if dtype not in _DTYPES:
            raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(sorted(_DTYPES))}")
        self.model_path = str(model_path)
        self.dtype = dtype
        self.device = device
        self.model = (
            hf_model_class(self.model_path)
            .from_pretrained(self.model_path, dtype=getattr(torch, dtype))
            .to(device)
            .eval()
        )
        self.fp32_lm_head = fp32_lm_head
        if fp32_lm_head:
            self.model.get_output_embeddings().register_forward_hook(_float32_logits)

    @property
    def eos_token_ids(self) -> set[int]:
        generation_config = getattr(self.model, "generation_config", None)
        return _ids(self.model.config.eos_token_id) | _ids(getattr(generation_config, "eos_token_id", None))

    def _forward(self, ids: Sequence[int]):
        import torch

        with torch.no_grad():
            return self.model(torch.tensor([list(ids)], device=self.device)).logits[0]

    def logits(self, inputs) -> list:
        """Per sequence ``[len_i, vocab]`` logits (causal LMs: position i predicts token i+1)."""
        return [self._forward(ids) for ids in self.token_lists(inputs)]

    def full_logits(self, inputs) -> list:
        """The same as `logits`, under the name `Forward.full_logits` has (a runner's `logits` gives
        a decoder's last position only)."""
        return self.logits(inputs)

    def next_token_logits(self, inputs):
        """``[batch, vocab]``: each sequence's last-position logits, as `ForwardResult.next_token_logits`."""
        import torch

        return torch.stack([logits[-1] for logits in self.logits(inputs)])

    def generate(
        self,
        prompts,
        max_new_tokens: int = 16,
        top_logprobs: int | None = 5,
        stop_token_ids=(),
        ignore_eos: bool = False,
        temperature: float = 0.0,
        top_k: int = -1,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        frequency_penalty: float = 0.0,
        presence_penalty: float = 0.0,
        seed: int | None = None,
    ) -> list[Generation]:
        """Continuations from transformers' ``generate``, shaped like `Forward.generate`'s.

        Greedy by default; otherwise transformers samples with its own temperature, top_k, top_p,
        min_p and repetition_penalty (its repetition penalty also counts the prompt's tokens,
        SGLang's only the output's). transformers has no frequency or presence penalty: a
        non-zero one is a ValueError. ``seed`` seeds torch's generators (``torch.manual_seed``)
        before the first prompt, so the same call with the same seed gives the same tokens.
        """
        check_arguments(max_new_tokens, top_logprobs)
        sampling = Sampling(
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=repetition_penalty,
            frequency_penalty=frequency_penalty,
            presence_penalty=presence_penalty,
            seed=seed,
        )
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(sampling, name):
                raise ValueError(f"{name}={getattr(sampling, name)!r}: transformers' generate has no {name}; use 0")
        stops = set() if ignore_eos else self.eos_token_ids | {int(t) for t in stop_token_ids}
        token_lists = self.token_lists(prompts)
        if seed is not None:
            import torch

            torch.manual_seed(seed)
        return [self._generate_one(ids, max_new_tokens, top_logprobs, stops, sampling) for ids in token_lists]

    def _generate_one(
        self, prompt: list[int], max_new_tokens: int, top_logprobs: int | None, stops: set[int], sampling: Sampling
    ) -> Generation:
        import copy

        import torch

        config = copy.deepcopy(self.model.generation_config)
        # None would fall back to the checkpoint's EOS; an id past the vocabulary never stops.
        never = [self.model.get_output_embeddings().weight.shape[0]]
        config.update(
            do_sample=not sampling.greedy,
            temperature=sampling.temperature if not sampling.greedy else 1.0,
            top_k=None if sampling.top_k == -1 else sampling.top_k,
            top_p=sampling.top_p,
            min_p=sampling.min_p or None,
            repetition_penalty=sampling.repetition_penalty,
            num_beams=1,
            max_new_tokens=max_new_tokens,
            min_new_tokens=None,
            eos_token_id=sorted(stops) or never,
            pad_token_id=config.pad_token_id if config.pad_token_id is not None else 0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        input_ids = torch.tensor([prompt], device=self.device)
        with torch.no_grad():
            out = self.model.generate(input_ids, attention_mask=torch.ones_like(input_ids), generation_config=config)
        output_ids = out.sequences[0, len(prompt) :].tolist()
        result = Generation(prompt_ids=list(prompt), output_ids=output_ids)
        result.finish_reason = "stop" if output_ids and output_ids[-1] in stops else "length"
        result.text = self.decode(output_ids)
        if top_logprobs is not None:
            step_logits = torch.cat([logits[:1] for logits in out.logits])[: len(output_ids)]
            logprobs, tops = _logprobs(step_logits, top_logprobs)
            result.output_logprobs = [
                TokenLogprob(token, float(logprobs[j, token]), tops[j]) for j, token in enumerate(output_ids)
            ]
            logprobs, tops = _logprobs(self._forward(prompt)[:-1], top_logprobs)
            result.prompt_logprobs = [None] + [
                TokenLogprob(token, float(logprobs[i, token]), tops[i]) for i, token in enumerate(prompt[1:])
            ]
        return result
