"""Decoder MeZO: a causal LM scored at each prompt's last position, as the MeZO paper runs OPT.

The prompt ends where the label word would follow ("<sentence> It was"); the loss is the
cross-entropy over the label words' logits at that last position (`PromptObjective`, the same as
for the masked LM: the scorers below give "the logits at each sequence's scoring position").
`HFCausalLM` is the HF twin; `SGLangCausalLM` runs the runner's own decoder (SGLang's logits
processor returns exactly the last position's logits) with its parameters under HF's names
(`llama_views`). `CandidateObjective` scores labels of several tokens; `DecoderPrompt` encodes
sentiment examples for a decoder's tokenizer.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .objective import Encoded, HFMaskedLM, PromptObjective, SGLangMaskedLM

LABEL_WORDS = {0: " terrible", 1: " great"}


class HFCausalLM(HFMaskedLM):
    """An HF causal LM, batches padded on the right; the LM head runs on each scoring position only."""

    def __init__(self, model: torch.nn.Module, pad_token_id: int | None = None):
        pad = model.config.pad_token_id if pad_token_id is None else pad_token_id
        super().__init__(model, pad_token_id=0 if pad is None else pad)

    @torch.no_grad()
    def mask_logits(self, prepared):
        input_ids, attention, positions = prepared
        hidden = self.model.model(input_ids=input_ids, attention_mask=attention).last_hidden_state
        rows = torch.arange(len(positions), device=self.device)
        return self.model.lm_head(hidden[rows, positions])


class SGLangCausalLM(SGLangMaskedLM):
    """The runner's decoder (Llama family), scored at each prompt's last position.

    Batches are never padded (SGLang's decoder writes every token's KV, filler included, so a
    graph must keep its batch's KV slots): with graphs, a layout seen before is captured and
    holds its KV slots until another layout comes or `close`. ``share_prefix``: where a batch's
    prompts start with the same ``min_shared`` tokens or more (a template, demonstrations), that
    prefix runs once per forward and each prompt's rest on top of its KV (never across forwards,
    so never across weight states); such batches run eagerly.
    """

    def __init__(self, model_runner, *, graphs: str | bool = "auto", share_prefix: bool = False, min_shared: int = 8):
        super().__init__(model_runner, graphs=graphs, padding=False)
        self.share_prefix, self.min_shared = share_prefix, min_shared

    def _parameter_views(self, model_runner):
        from .llama_views import llama_sglang_views

        return llama_sglang_views(model_runner.model, model_runner.model_config.hf_config)

    def prepare(self, token_lists, positions):
        from ..runner import limits
        from ..sglang_compat import graphs as sglang_graphs

        if any(position != len(ids) - 1 for ids, position in zip(token_lists, positions)):
            raise ValueError(
                "a decoder is scored at each prompt's last position: end the prompt where the label follows"
            )
        shared = sglang_graphs.shared_prefix_length(token_lists) if self.share_prefix else 0
        if shared < self.min_shared:
            return super().prepare(token_lists, positions)
        self.close()  # a captured layout holds KV slots
        limits.check_batch(self.runner, token_lists)
        return sglang_graphs.SharedPrefixCall(self.runner, token_lists[0][:shared], token_lists)

    @torch.no_grad()
    def mask_logits(self, prepared):
        return prepared().next_token_logits


class CandidateObjective(PromptObjective):
    """Labels of several tokens (MeZO's candidate form for decoders): candidate j's score is the sum
    of its tokens' log-probabilities after the prompt, and the loss is the cross-entropy over the
    candidates' scores. Each example becomes one sequence per candidate token, scored at its last
    position (prompt + the candidate's tokens before it). With one-token candidates it is the
    label-word loss of `PromptObjective` (the log-normaliser cancels in the softmax).
    """

    def __init__(self, lm, candidates: Sequence[Sequence[int]]):
        super().__init__(lm, [c[0] for c in candidates])
        self.candidates = [list(c) for c in candidates]

    def prepare(self, examples: Sequence[Encoded]):
        sequences, targets, owners = [], [], []
        for i, example in enumerate(examples):
            for j, candidate in enumerate(self.candidates):
                for t, token in enumerate(candidate):
                    sequences.append([*example.input_ids, *candidate[:t]])
                    targets.append(token)
                    owners.append(i * len(self.candidates) + j)
        batch = self.lm.prepare(sequences, [len(ids) - 1 for ids in sequences])
        device = self.lm.device
        labels = torch.tensor([e.label for e in examples]).to(device, non_blocking=True)
        return batch, labels, torch.tensor(targets).to(device), torch.tensor(owners).to(device), len(examples)

    def scores(self, prepared) -> torch.Tensor:
        batch, _, targets, owners, n_examples = prepared
        logprobs = F.log_softmax(self.lm.mask_logits(batch).float(), dim=-1).gather(1, targets[:, None])[:, 0]
        sums = torch.zeros(n_examples * len(self.candidates), device=logprobs.device).index_add_(0, owners, logprobs)
        return sums.view(n_examples, len(self.candidates))


class DecoderPrompt:
    """``{start} {sentence} It was`` for a decoder's tokenizer (``start``: the special tokens the
    tokenizer puts before any text); label words " terrible" / " great"."""

    def __init__(self, tokenizer, max_length: int = 128, suffix: str = " It was"):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._suffix = tokenizer.encode(suffix, add_special_tokens=False)
        # What the tokenizer itself puts before a text (Llama's <s>; nothing for SmolLM2's).
        self._start = [t for t in tokenizer.encode("", add_special_tokens=True) if t != tokenizer.eos_token_id]
        self.label_word_ids = [self._single_token(LABEL_WORDS[label]) for label in sorted(LABEL_WORDS)]

    def _single_token(self, word: str) -> int:
        ids = self.tokenizer.encode(word, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"label word {word!r} is {len(ids)} tokens for this tokenizer; the prompt needs one")
        return ids[0]

    def encode(self, example) -> Encoded:
        """An example with ``sentence`` and ``label`` (e.g. `sst2.Example`)."""
        sentence = self.tokenizer.encode(" " + example.sentence.strip(), add_special_tokens=False)
        sentence = sentence[: self.max_length - len(self._start) - len(self._suffix)]  # keep the template whole
        ids = [*self._start, *sentence, *self._suffix]
        return Encoded(tuple(ids), len(ids) - 1, example.label)

    def encode_all(self, examples: Sequence) -> list[Encoded]:
        return [self.encode(e) for e in examples]
