"""``embedded-llama``: a tiny Llama decoder the kit trains itself, offline, in a few seconds.

Trained rather than random because decode tests need two things random weights do not give:
clear margins between the best and second-best token (so a greedy decode compared token for
token with HF, or in bf16 under a tolerance, tests the kernels and not the tie-breaking), and a
model that ends its sentences (so EOS really stops a sequence). The corpus is sentences built
from the embedded word lists with Zipf-weighted word choices, so the next-token distributions
are ranked rather than flat: ``"the film was"`` continues ``" bad . </s>"``.

The shape is Llama's with grouped-query attention (4 query heads, 2 KV heads, head_dim 64: the
head size SGLang's CUDA RoPE kernels serve directly), 2 layers, about 0.4M parameters.
"""

from __future__ import annotations

import random
from pathlib import Path

from .words import NEGATIVE_WORDS, POSITIVE_WORDS, train_bpe

SEED = 20240521
DECODER_SPECIAL_TOKENS = ("<s>", "</s>", "<unk>", "<pad>")
DECODER_CONFIG = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=3,
)
NOUNS = "film movie story acting plot script ending music direction cast scene performance".split()
TRAIN_STEPS = 300
TRAIN_BATCH = 32
LEARNING_RATE = 3e-3


def build_decoder_tokenizer(directory: Path):
    """The embedded BPE as a Llama-style tokenizer: ``<s>`` prepended, ``</s>`` as EOS."""
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = train_bpe(DECODER_SPECIAL_TOKENS)
    bpe._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=256,
    )
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def corpus(n: int = 2000, seed: int = SEED) -> list[str]:
    """Review-like sentences; earlier words in each list are likelier (weight 1/rank)."""
    rng = random.Random(seed)

    def pick(words):
        return rng.choices(words, weights=[1 / (rank + 1) for rank in range(len(words))])[0]

    templates = (
        (4, lambda: f"the {pick(NOUNS)} was {pick(POSITIVE_WORDS)} ."),
        (3, lambda: f"the {pick(NOUNS)} was {pick(NEGATIVE_WORDS)} ."),
        (2, lambda: f"It was a {pick(POSITIVE_WORDS)} {pick(NOUNS)} ."),
        (
            1,
            lambda: (
                f"the {pick(NOUNS)} and the {pick(NOUNS)} were very {pick(NEGATIVE_WORDS)} , but the {pick(NOUNS)} was {pick(POSITIVE_WORDS)} ."
            ),
        ),
        (2, lambda: f"this {pick(NOUNS)} is really {pick(POSITIVE_WORDS)} !"),
    )
    weights = [weight for weight, _ in templates]
    return [rng.choices(templates, weights=weights)[0][1]() for _ in range(n)]


def train(model, token_lists: list[list[int]], steps: int = TRAIN_STEPS, seed: int = SEED) -> float:
    """Next-token training with AdamW on random batches of whole sentences; returns the last loss."""
    import torch

    width = max(map(len, token_lists))
    labels = torch.full((len(token_lists), width), -100)
    for row, ids in enumerate(token_lists):
        labels[row, : len(ids)] = torch.tensor(ids)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    model.train()
    for _ in range(steps):
        batch = labels[torch.randint(0, len(token_lists), (TRAIN_BATCH,), generator=generator)]
        loss = model(input_ids=batch.clamp(min=0), attention_mask=(batch != -100).long(), labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return loss.item()


def write_embedded_llama(directory: Path) -> Path:
    """Tokenizer, config, generation config and trained safetensors weights into ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    tokenizer = build_decoder_tokenizer(directory)
    sentences = [tokenizer(text)["input_ids"] + [tokenizer.eos_token_id] for text in corpus()]
    config = LlamaConfig(vocab_size=len(tokenizer), architectures=["LlamaForCausalLM"], **DECODER_CONFIG)
    with torch.random.fork_rng(devices=[]):  # leaves the caller's global RNG as it was
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config)
    train(model, sentences)
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory


# SmolLM2-135M-Instruct's shape (its config.json), for benchmarks that need a real size without its weights.
SMOLLM2_SHAPE = dict(
    hidden_size=576,
    intermediate_size=1536,
    num_hidden_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    head_dim=64,
    vocab_size=49152,
    max_position_embeddings=8192,
    rms_norm_eps=1e-5,
    rope_theta=100000.0,
    tie_word_embeddings=True,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=3,
)


def write_random_llama(directory: Path, shape: dict = SMOLLM2_SHAPE, dtype: str = "bfloat16") -> Path:
    """A Llama of ``shape`` with random weights (seeded) and the embedded decoder tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = Path(directory)
    build_decoder_tokenizer(directory)
    config = LlamaConfig(architectures=["LlamaForCausalLM"], dtype=dtype, **shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(str(directory), safe_serialization=True)
    return directory
