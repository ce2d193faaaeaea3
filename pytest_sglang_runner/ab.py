"""The same prompts through two runner configs in one test: does a backend, a kernel or a flag
change anything?

vLLM's ``compare_two_settings`` is the model: one run per setting, greedy tokens and logprobs by
the rules, seeded sampling by token ids, embeddings by cosine. One runner lives per process, so
`ConfigComparison` runs the two configs one after the other, the live one first (which spares a
build), and keeps every config's outputs per prompt set for the session (`OutputCache`): a
parametrized module that hands all its prompt sets to `prefetch` builds each config once.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .compare import assert_logprobs_close, assert_tokens_equal
from .errors import SpecError
from .runner.factory import RunnerFactory

KINDS = ("logprobs", "tokens", "embeddings")
# `compare.logprob_mismatches`' keywords and the embeddings' cosine floor: the rest goes to generate.
RULES = frozenset({"rank_rule", "tolerance_rule", "prefill_tolerance", "decode_tolerance", "min_cosine"})
# vLLM's check_embeddings_close: 1 - cosine within 1e-2.
MIN_COSINE = 0.99


def _prompts_key(prompts: Sequence) -> tuple:
    return tuple(p if isinstance(p, str) else tuple(int(t) for t in p) for p in prompts)


def _options_key(kind: str, options: dict[str, Any]) -> tuple:
    return (kind, tuple(sorted((k, tuple(v) if isinstance(v, (list, set)) else v) for k, v in options.items())))


def describe(name: str, config: dict[str, Any]) -> str:
    """``baseline (attention_backend='triton')``: how a table names a config."""
    settings = ", ".join(f"{k}={v!r}" for k, v in sorted(config.items()))
    return f"{name} ({settings})" if settings else name


@dataclass
class OutputCache:
    """Each config's outputs, per prompt set and options, for the whole session."""

    entries: dict[tuple, Any] = field(default_factory=dict)


@dataclass
class ConfigComparison:
    """Runs prompts through runner configs given as overrides of the test's own settings."""

    factory: RunnerFactory
    base: dict[str, Any]  # the test's settings (markers, factory fixture); each config goes on top
    cache: OutputCache

    def outputs(self, config: dict[str, Any], prompts: Sequence, kind: str = "logprobs", **options) -> list:
        """``prompts`` through ``config``: `Generation` per prompt (``logprobs``, ``tokens``) or an
        embedding per prompt (``embeddings``); from the cache when this config ran them already."""
        return self._run(config, [prompts], kind, options)[0]

    def prefetch(
        self, prompt_sets: Iterable[Sequence], *, baseline: dict, candidate: dict, kind: str = "logprobs", **options
    ) -> None:
        """Run every prompt set through each config now, one build per config, so that the tests
        comparing them one set at a time find them cached."""
        prompt_sets = list(prompt_sets)
        for config in self._live_first(baseline, candidate):
            self._run(config, prompt_sets, kind, options)

    def __call__(
        self, prompts: Sequence, *, baseline: dict, candidate: dict, kind: str = "logprobs", **options
    ) -> tuple[list, list]:
        """Fail with a table naming both configs unless ``prompts`` give the same outputs under
        ``baseline`` and ``candidate``; return both sides' outputs.

        ``kind``: ``logprobs`` (greedy, rank and tolerance rules), ``tokens`` (exact tokens: greedy,
        or seeded sampling with ``temperature=…, seed=…``) or ``embeddings`` (cosine at least
        ``min_cosine``, 0.99). Keywords: the rules' (``prefill_tolerance``, ``decode_tolerance``,
        ``rank_rule``, ``tolerance_rule``, ``min_cosine``), the rest `Forward.generate`'s."""
        __tracebackhide__ = True
        rules = {k: v for k, v in options.items() if k in RULES}
        options = {k: v for k, v in options.items() if k not in RULES}
        self.prefetch([prompts], baseline=baseline, candidate=candidate, kind=kind, **options)
        ours = self.outputs(baseline, prompts, kind, **options)
        theirs = self.outputs(candidate, prompts, kind, **options)
        names = (describe("baseline", baseline), describe("candidate", candidate))
        if kind == "logprobs":
            assert_logprobs_close(ours, theirs, names=names, **rules)
        elif kind == "tokens":
            assert_tokens_equal(ours, theirs, names=names)
        else:
            assert_embeddings_close(ours, theirs, names=names, **rules)
        return ours, theirs

    def _live_first(self, *configs: dict) -> list[dict]:
        live = self.factory.live
        if live is None:
            return list(configs)
        return sorted(configs, key=lambda config: self.factory.spec_for(**{**self.base, **config}) != live.spec)

    def _run(self, config: dict, prompt_sets: list[Sequence], kind: str, options: dict) -> list:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {', '.join(KINDS)}")
        if kind == "embeddings" and options:
            raise ValueError(f"embeddings take no generate options (got {', '.join(sorted(options))})")
        overrides = {**self.base, **config}
        spec = self.factory.spec_for(**overrides)
        keys = [(spec, _prompts_key(prompts), _options_key(kind, options)) for prompts in prompt_sets]
        missing = [(key, prompts) for key, prompts in zip(keys, prompt_sets) if key not in self.cache.entries]
        if missing:
            forward = self.factory.get(**overrides).forward
            for key, prompts in missing:
                self.cache.entries[key] = (
                    _embeddings(forward, prompts) if kind == "embeddings" else forward.generate(prompts, **options)
                )
        return [copy.deepcopy(self.cache.entries[key]) for key in keys]


def _embeddings(forward, prompts: Sequence) -> list:
    embeddings = forward.embeddings(prompts)
    if embeddings is None:
        raise ValueError(f"kind='embeddings' needs an embedding model; {forward.model_path} is generative here")
    return [row.clone() for row in embeddings]


def assert_embeddings_close(
    ours: Sequence, theirs: Sequence, *, names: tuple[str, str] = ("sglang", "hf"), min_cosine: float = MIN_COSINE
) -> None:
    """Fail with a table unless each pair of embeddings has a cosine of at least ``min_cosine``."""
    import torch

    if len(ours) != len(theirs):
        raise ValueError(f"{len(ours)} embeddings against {len(theirs)}: compare the results of the same prompts")
    low = []
    for index, (a, b) in enumerate(zip(ours, theirs)):
        cosine = float(torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0))
        if cosine < min_cosine:
            low.append(f"  {index:>3}  {cosine:.6f}")
    if low:
        raise AssertionError(
            f"{names[0]} and {names[1]} embeddings differ (cosine below {min_cosine}) for {len(low)} of "
            f"{len(ours)} prompts:\n  seq  cosine\n" + "\n".join(low)
        )


def check_not_mixed(fixture_names: Iterable[str], runner_fixtures: Iterable[str]) -> None:
    """`ConfigComparison` rebuilds the process's one runner: a runner fixture of the same test
    would be torn down under it."""
    mixed = sorted(set(fixture_names) & set(runner_fixtures))
    if mixed:
        raise SpecError(
            f"sglang_compare builds each config's runner in turn, which tears down this test's {', '.join(mixed)}: "
            "use sglang_compare.outputs(config, prompts) for each side instead"
        )
