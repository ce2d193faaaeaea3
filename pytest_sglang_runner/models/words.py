"""The embedded models' vocabulary: fixed word lists and the byte-level BPE trained on them.

Shared by both embedded models (`embedded`, `embedded_llama`) and the synthetic SST-2 data
(`mezo.sst2`): every word is one token, with the same ids every time.
"""

from __future__ import annotations

POSITIVE_WORDS = (
    "good great wonderful excellent delightful brilliant superb charming moving beautiful "
    "enjoyable amazing fantastic lovely touching clever funny warm gripping stunning"
).split()
NEGATIVE_WORDS = (
    "bad terrible awful boring dull horrible dreadful poor weak tedious messy painful bland "
    "lifeless annoying clumsy stale hollow silly forgettable"
).split()
NEUTRAL_WORDS = (
    "the a an this that it its film movie story acting plot script ending music direction "
    "characters cast scene scenes performance was is are and but very really quite so too "
    "It was . , ! ? of in on with for to from as at by director actors camera year time"
).split()


def _corpus() -> list[str]:
    words = POSITIVE_WORDS + NEGATIVE_WORDS + NEUTRAL_WORDS
    # Each word alone and after a space, many times, so BPE merges every word into one token.
    lines = []
    for _ in range(50):
        lines.extend(words)
        lines.append(" " + " ".join(words))
    return lines


def train_bpe(special_tokens: tuple[str, ...]):
    """A byte-level BPE trained on the fixed word list: every word is one token, same ids every time."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        _corpus(), vocab_size=1000, min_frequency=1, special_tokens=list(special_tokens), show_progress=False
    )
    return bpe
