"""SST-2 as MeZO's prompt task: template, label words, local loaders, a synthetic stand-in.

Template (LM-BFF / MeZO ``*cls**sent_0*_It_was*mask*.*sep+*``)::

    <s> {sentence} It was <mask> . </s>
    ids = [bos] + enc(sentence) + enc(" It was") + [mask] + enc(".") + [eos]

Label words: 0 -> " terrible", 1 -> " great" (one token each). Data is read from a local
directory only (``--sst2-dir`` / ini ``sst2_dir``), never downloaded: either GLUE's SST-2
(``train.tsv``, ``dev.tsv``: a header, then ``sentence<TAB>label``) or MeZO's k-shot layout
(``data/k-shot/SST-2/{k}-{seed}/{train,dev,test}.tsv``, same TSV format; ``test.tsv`` is GLUE's
dev set). The synthetic generator writes the same files from sentiment words the embedded model's
tokenizer has as single tokens, so everything except the real files is exercised on CPU.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import SST2Missing
from .objective import Encoded

TEMPLATE = "*cls**sent_0*_It_was*mask*.*sep+*"
LABEL_WORDS = {0: " terrible", 1: " great"}
KSHOT_KS = (16, 512)
KSHOT_SEEDS = (13, 21, 42, 87, 100)
# MeZO paper, Table 18 (RoBERTa-large, SST-2, accuracy %): mean and std over the 5 k-shot seeds.
PAPER_TABLE18 = {"zero_shot": (79.0, 0.0), "mezo_k16": (90.5, 1.2), "mezo_k512": (93.3, 0.7)}
# The reference's RoBERTa-large hyperparameters (medium_models/mezo.sh).
PAPER_HPARAMS = dict(batch_size=64, lr=1e-6, eps=1e-3, weight_decay=0.0, steps=100_000, eval_every=10_000)

OPTION = "--sst2-dir"
INI = "sst2_dir"


@dataclass(frozen=True)
class Example:
    sentence: str
    label: int


# --------------------------------------------------------------------------------------------
# Prompt


class SST2Prompt:
    """Encodes examples with the paper's template for a RoBERTa-style tokenizer."""

    def __init__(self, tokenizer, max_length: int = 128):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.label_word_ids = [self._single_token(LABEL_WORDS[label]) for label in sorted(LABEL_WORDS)]
        self._suffix = self._enc(" It was")
        self._end = self._enc(".")

    def _enc(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _single_token(self, word: str) -> int:
        ids = self._enc(word)
        if len(ids) != 1:
            raise ValueError(f"label word {word!r} is {len(ids)} tokens for this tokenizer; MeZO's SST-2 needs one")
        return ids[0]

    def encode(self, example: Example) -> Encoded:
        t = self.tokenizer
        sentence = self._enc(example.sentence)
        room = self.max_length - (len(self._suffix) + len(self._end) + 3)
        sentence = sentence[:room]  # truncate the sentence's tail, keep the template whole
        ids = [t.bos_token_id, *sentence, *self._suffix, t.mask_token_id, *self._end, t.eos_token_id]
        return Encoded(tuple(ids), 1 + len(sentence) + len(self._suffix), example.label)

    def encode_all(self, examples: Sequence[Example]) -> list[Encoded]:
        return [self.encode(e) for e in examples]


# --------------------------------------------------------------------------------------------
# Loading (local files only)


def read_tsv(path: Path) -> list[Example]:
    """GLUE SST-2 TSV: a header naming ``sentence`` and ``label`` columns, one example a line."""
    path = Path(path)
    if not path.is_file():
        raise SST2Missing(f"{path} not found; point {OPTION} (ini {INI}) at a local SST-2 directory")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    header, body = rows[0], rows[1:]
    try:
        sentence, label = header.index("sentence"), header.index("label")
    except ValueError:
        raise ValueError(f"{path}: header {header!r} lacks 'sentence' and 'label' columns") from None
    return [Example(row[sentence], int(row[label])) for row in body if row]


def write_tsv(path: Path, examples: Sequence[Example]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        f.write("sentence\tlabel\n")
        for e in examples:
            f.write(f"{e.sentence}\t{e.label}\n")
    return path


def load_glue_sst2(directory: Path) -> dict[str, list[Example]]:
    """GLUE's SST-2 directory: ``train`` and ``dev`` splits."""
    directory = _require_dir(directory)
    return {split: read_tsv(directory / f"{split}.tsv") for split in ("train", "dev")}


def kshot_dir(root: Path, k: int, seed: int) -> Path:
    """``{k}-{seed}`` under ``root``, ``root/SST-2`` or ``root/k-shot/SST-2`` (MeZO's data/ layout)."""
    root = _require_dir(root)
    for base in (root, root / "SST-2", root / "k-shot" / "SST-2"):
        if (base / f"{k}-{seed}").is_dir():
            return base / f"{k}-{seed}"
    raise SST2Missing(
        f"no {k}-{seed}/ under {root} (also tried SST-2/ and k-shot/SST-2/); {OPTION} must point at MeZO's "
        "k-shot data (made by medium_models/tools/generate_k_shot_data.py) or a directory holding it"
    )


def load_kshot(root: Path, k: int, seed: int) -> dict[str, list[Example]]:
    """One k-shot split set: ``train`` (k per class), ``dev`` (k per class), ``test`` (GLUE dev)."""
    d = kshot_dir(root, k, seed)
    return {split: read_tsv(d / f"{split}.tsv") for split in ("train", "dev", "test")}


def _require_dir(directory: Path | None) -> Path:
    if directory is None or str(directory) == "":
        raise SST2Missing(f"no SST-2 directory given; pass {OPTION} DIR (or set ini {INI})")
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise SST2Missing(f"{OPTION} {directory}: no such directory")
    return directory


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Synthetic SST-2-format task (tests)


def synthetic_examples(
    n: int,
    positive: Sequence[str],
    negative: Sequence[str],
    neutral: Sequence[str],
    seed: int = 0,
    sentiment_words: tuple[int, int] = (2, 4),
    filler_words: tuple[int, int] = (1, 3),
) -> list[Example]:
    """Balanced sentences like "the great film was moving" / "dull , boring plot": every sentence
    carries several words of one polarity, so the label is clear from the words alone."""
    rng = random.Random(seed)
    fillers = [w for w in neutral if w not in (".", "It", "was")]
    examples = []
    for i in range(n):
        label = i % 2
        words = rng.sample(fillers, rng.randint(*filler_words))
        for _ in range(rng.randint(*sentiment_words)):
            words.insert(rng.randint(0, len(words)), rng.choice(positive if label else negative))
        examples.append(Example(" ".join(words), label))
    rng.shuffle(examples)
    return examples


def embedded_word_lists() -> tuple[list[str], list[str], list[str]]:
    from ..models.words import NEGATIVE_WORDS, NEUTRAL_WORDS, POSITIVE_WORDS

    return list(POSITIVE_WORDS), list(NEGATIVE_WORDS), list(NEUTRAL_WORDS)


def write_synthetic_glue(directory: Path, n_train: int = 512, n_dev: int = 128, seed: int = 0) -> Path:
    """A GLUE-format SST-2 directory (train.tsv, dev.tsv) of synthetic sentences."""
    pos, neg, neu = embedded_word_lists()
    examples = synthetic_examples(n_train + n_dev, pos, neg, neu, seed)
    write_tsv(Path(directory) / "train.tsv", examples[:n_train])
    write_tsv(Path(directory) / "dev.tsv", examples[n_train:])
    return Path(directory)


def write_synthetic_kshot(
    root: Path, ks: Sequence[int] = (16,), seeds: Sequence[int] = KSHOT_SEEDS, n_test: int = 128
) -> Path:
    """MeZO's layout ``root/k-shot/SST-2/{k}-{seed}/{train,dev,test}.tsv`` from synthetic data."""
    pos, neg, neu = embedded_word_lists()
    test = synthetic_examples(n_test, pos, neg, neu, seed=10_000)
    for k in ks:
        for seed in seeds:
            d = Path(root) / "k-shot" / "SST-2" / f"{k}-{seed}"
            pool = synthetic_examples(4 * k, pos, neg, neu, seed=seed)
            by_label = {0: [e for e in pool if e.label == 0], 1: [e for e in pool if e.label == 1]}
            write_tsv(d / "train.tsv", by_label[0][:k] + by_label[1][:k])
            write_tsv(d / "dev.tsv", by_label[0][k : 2 * k] + by_label[1][k : 2 * k])
            write_tsv(d / "test.tsv", test)
    return Path(root)
