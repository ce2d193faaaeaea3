"""Sampling in `generate` (issue #23): SGLang's sampler on the real runner, checked against the
distribution it should draw from (`sampling.expected_distribution`) with `sampling.assert_samples_match`.

Every statistical test here is seeded, so it gives the same verdict on every run of one device;
the calibration test checks that a correct sampler fails `assert_samples_match` at its stated rate.
"""

from __future__ import annotations

import pytest
import torch

from pytest_sglang_runner.reference import HFRunner
from pytest_sglang_runner.sampling import assert_samples_match, chi_square_survival, expected_distribution

pytestmark = pytest.mark.sglang(model="embedded-llama", dtype="float32")

PROMPT = "the film was"  # its next token at temperature 1: top-1 0.26, about 30 tokens with >= 5 of 1200 samples
PROMPTS = [PROMPT, "the music and the film were very", "It", "this story is really good ! the acting"]
SAMPLES = 1200  # two calls of CHUNK rows: on CPU the extend forward of the rows is what costs
CHUNK = 600  # rows per generate call: 5 KV slots each (4-token prompt, 1 new), within the default 4096


def sample_next_tokens(forward, prompt: str, count: int = SAMPLES, seed: int = 0, **sampling) -> list[int]:
    """``count`` next tokens of ``prompt``, as rows of a few seeded ``max_new_tokens=1`` calls."""
    tokens = []
    for start in range(0, count, CHUNK):
        rows = min(CHUNK, count - start)
        generations = forward.generate(
            [prompt] * rows, max_new_tokens=1, top_logprobs=None, ignore_eos=True, seed=seed + start, **sampling
        )
        tokens += [generation.output_ids[0] for generation in generations]
    return tokens


def tokens_of(generations) -> list[list[int]]:
    return [generation.output_ids for generation in generations]


# --------------------------------------------------------------------------------------------
# The runner: greedy as before, seeds, distributions, penalties, arguments
# --------------------------------------------------------------------------------------------


def test_greedy_is_the_default_and_ignores_seeds(sglang_forward):
    greedy = tokens_of(sglang_forward.generate(PROMPTS, max_new_tokens=8))
    assert tokens_of(sglang_forward.generate(PROMPTS, max_new_tokens=8, temperature=0.0, seed=7)) == greedy
    assert tokens_of(sglang_forward.generate(PROMPTS, max_new_tokens=8, temperature=1.0, top_k=1, seed=8)) == greedy
    logits = sglang_forward.logits(PROMPTS)
    assert [ids[0] for ids in greedy] == logits.argmax(dim=-1).tolist()


def test_the_same_seed_gives_the_same_tokens_and_leaves_torch_random_state_alone(sglang_forward):
    state = torch.random.get_rng_state()
    first = tokens_of(sglang_forward.generate(PROMPTS * 4, max_new_tokens=8, temperature=1.0, seed=1234))
    assert torch.equal(torch.random.get_rng_state(), state)
    torch.rand(3)  # whatever the test does in between
    again = tokens_of(sglang_forward.generate(PROMPTS * 4, max_new_tokens=8, temperature=1.0, seed=1234))
    assert again == first


def test_different_seeds_give_different_tokens(sglang_forward):
    runs = [
        tokens_of(sglang_forward.generate(PROMPTS, max_new_tokens=8, temperature=1.0, seed=seed)) for seed in (1, 2)
    ]
    assert runs[0] != runs[1]


@pytest.mark.parametrize(
    "sampling",
    [
        dict(temperature=1.0),
        dict(temperature=1.0, top_k=5),
        dict(temperature=1.0, top_p=0.5),
        dict(temperature=1.0, min_p=0.1),
        dict(temperature=1.3, top_k=20, top_p=0.8, min_p=0.05),
    ],
    ids=lambda sampling: ",".join(f"{name}={value}" for name, value in sampling.items()),
)
def test_sampled_frequencies_follow_the_distribution_sglang_defines(sglang_forward, sampling):
    (logits,) = sglang_forward.logits([PROMPT])
    tokens = sample_next_tokens(sglang_forward, PROMPT, **sampling)
    assert_samples_match(tokens, expected_distribution(logits, **sampling))


def test_samples_fail_against_a_wrong_distribution(sglang_forward):
    (logits,) = sglang_forward.logits([PROMPT])
    tokens = sample_next_tokens(sglang_forward, PROMPT, count=CHUNK, temperature=1.0)
    assert_samples_match(tokens, expected_distribution(logits, temperature=1.0))
    with pytest.raises(AssertionError, match=r"chi-square .* p = .* < false_failure_rate 0.001\n +tokens +expected"):
        assert_samples_match(tokens, expected_distribution(logits, temperature=0.5))
    with pytest.raises(AssertionError, match="samples are tokens of probability 0"):
        assert_samples_match(tokens, expected_distribution(logits, temperature=1.0, top_k=5))


def _penalised(logits: torch.Tensor, earlier: list[int], name: str, value: float) -> torch.Tensor:
    """SGLang's penalties (sampling/penaltylib), over the output tokens so far only."""
    counts = torch.bincount(torch.tensor(earlier, dtype=torch.long), minlength=logits.numel()).float()
    seen = counts > 0
    if name == "frequency_penalty":
        return logits - value * counts
    if name == "presence_penalty":
        return logits - value * seen.float()
    scaled = torch.where(logits < 0, logits * value, logits / value)  # repetition_penalty
    return torch.where(seen, scaled, logits)


@pytest.mark.parametrize(
    "name, value",
    [("frequency_penalty", 1.0), ("presence_penalty", -2.0), ("repetition_penalty", 1.5)],
)
def test_greedy_decoding_with_a_penalty_takes_the_argmax_of_the_penalised_logits(sglang_forward, name, value):
    """Step by step: each output token is the argmax of the prompt-and-output-so-far's logits,
    penalised as SGLang defines it; and the penalty changes some step's choice (or the check is empty)."""
    changed = 0
    for generation in sglang_forward.generate(
        PROMPTS, max_new_tokens=12, top_logprobs=None, ignore_eos=True, **{name: value}
    ):
        output = generation.output_ids
        logits = sglang_forward.logits([generation.prompt_ids + output[:j] for j in range(len(output))])
        penalised = torch.stack([_penalised(logits[j], output[:j], name, value) for j in range(len(output))])
        assert penalised.argmax(dim=-1).tolist() == output
        changed += logits.argmax(dim=-1).tolist() != output
    assert changed


def test_the_largest_penalties_make_greedy_decoding_repeat_itself_less(sglang_forward):
    """Each penalty alone is capped (presence and frequency at 2, repetition at 2) and this model's
    repeated tokens win by larger margins than that; all three together break most repeats."""
    penalties = dict(repetition_penalty=2.0, presence_penalty=2.0, frequency_penalty=2.0)
    plain = tokens_of(sglang_forward.generate(PROMPTS, max_new_tokens=8, ignore_eos=True))
    penalised = tokens_of(sglang_forward.generate(PROMPTS, max_new_tokens=8, ignore_eos=True, **penalties))
    distinct = [len(set(ids)) for ids in plain], [len(set(ids)) for ids in penalised]
    assert distinct[0] == [3, 8, 6, 2]  # greedily, this model repeats itself
    assert all(after > before for before, after in zip(*distinct) if before < 8)


@pytest.mark.parametrize(
    "argument, value",
    [
        ("temperature", -0.5),
        ("temperature", float("nan")),
        ("top_k", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("min_p", 1.5),
        ("repetition_penalty", 0.0),
        ("frequency_penalty", 2.5),
        ("presence_penalty", -3.0),
        ("seed", 1.5),
    ],
)
def test_bad_sampling_arguments_are_value_errors_naming_the_argument(sglang_forward, argument, value):
    pools = sglang_forward.runner.token_to_kv_pool_allocator, sglang_forward.runner.req_to_token_pool
    free_before = [pool.available_size() for pool in pools]
    with pytest.raises(ValueError, match=rf"^{argument}={value!r}: expected "):
        sglang_forward.generate(PROMPT, **{argument: value})
    assert [pool.available_size() for pool in pools] == free_before


# --------------------------------------------------------------------------------------------
# The HF reference
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hf(runner_factory) -> HFRunner:
    return runner_factory.hf_runner(runner_factory.spec_for(model="embedded-llama", dtype="float32"))


def test_hf_generate_takes_the_shared_parameters_and_is_reproducible_per_seed(hf):
    sampling = dict(temperature=1.2, top_k=30, top_p=0.95, min_p=0.01, repetition_penalty=1.1)
    first = tokens_of(hf.generate(PROMPTS, max_new_tokens=6, top_logprobs=None, seed=5, **sampling))
    assert tokens_of(hf.generate(PROMPTS, max_new_tokens=6, top_logprobs=None, seed=5, **sampling)) == first
    others = [tokens_of(hf.generate(PROMPTS, max_new_tokens=6, top_logprobs=None, seed=s, **sampling)) for s in (6, 7)]
    assert any(run != first for run in others)


@pytest.mark.parametrize("name", ["frequency_penalty", "presence_penalty"])
def test_hf_generate_refuses_the_penalties_transformers_lacks(hf, name):
    with pytest.raises(ValueError, match=rf"^{name}=0.5: transformers' generate has no {name}"):
        hf.generate(PROMPT, temperature=1.0, **{name: 0.5})


# --------------------------------------------------------------------------------------------
# The statistics alone
# --------------------------------------------------------------------------------------------


def _distribution(size: int = 50, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(size, generator=generator, dtype=torch.float64) * 1.5, dim=0)


def _draw(probs: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    return torch.multinomial(probs, count, replacement=True, generator=torch.Generator().manual_seed(seed))


def test_samples_of_the_distribution_itself_pass_and_of_a_shifted_one_fail():
    probs = _distribution()
    assert assert_samples_match(_draw(probs, 2000, seed=1), probs) >= 1e-3
    shifted = probs.clone()
    shifted[probs.argmax()] *= 0.5  # half the top token's mass (0.36) spread over the others
    with pytest.raises(AssertionError, match="do not follow the distribution"):
        assert_samples_match(_draw(shifted / shifted.sum(), 2000, seed=1), probs)


def test_a_correct_sampler_fails_at_about_the_stated_rate():
    probs = _distribution(seed=3)
    failures = 0
    for trial in range(300):
        try:
            assert_samples_match(_draw(probs, 500, seed=100 + trial), probs, false_failure_rate=0.1)
        except AssertionError:
            failures += 1
    assert 12 <= failures <= 50  # binomial(300, 0.1): mean 30, sd 5.2


def test_one_possible_token_is_a_pass_and_a_zero_probability_token_a_failure():
    probs = torch.tensor([0.0, 1.0, 0.0])
    assert assert_samples_match([1] * 100, probs) == 1.0
    with pytest.raises(AssertionError, match=r"1 of 101 samples are tokens of probability 0 \(token: count\) \{2: 1\}"):
        assert_samples_match([1] * 100 + [2], probs)


def test_chi_square_survival_matches_known_quantiles():
    assert chi_square_survival(3.841458820694124, 1) == pytest.approx(0.05, rel=1e-9)
    assert chi_square_survival(23.20925115650846, 10) == pytest.approx(0.01, rel=1e-9)


def test_expected_distribution_follows_sglangs_order_of_top_k_top_p_min_p():
    logits = torch.log(torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1]))
    assert expected_distribution(logits).tolist() == pytest.approx([0.05, 0.4, 0.3, 0.15, 0.1])
    assert expected_distribution(logits, temperature=0).tolist() == [0, 1, 0, 0, 0]
    assert expected_distribution(logits, top_k=2).tolist() == pytest.approx([0, 0.4 / 0.7, 0.3 / 0.7, 0, 0])
    top_three = [0, 0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0]
    # top-p keeps a token while the mass above it is at most top_p: 0.4 + 0.3 <= 0.75 keeps 0.15, not 0.1
    assert expected_distribution(logits, top_p=0.75).tolist() == pytest.approx(top_three)
    assert expected_distribution(logits, min_p=0.3).tolist() == pytest.approx(top_three)  # >= 0.3 * 0.4
    assert expected_distribution(logits, top_k=4, top_p=0.75, min_p=0.3).tolist() == pytest.approx(top_three)
    squared = expected_distribution(logits, temperature=0.5)
    assert squared.tolist() == pytest.approx((torch.tensor([0.05, 0.4, 0.3, 0.15, 0.1]) ** 2 / 0.2850).tolist())


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: assert_samples_match([0], torch.ones(2), false_failure_rate=0), "false_failure_rate=0"),
        (lambda: assert_samples_match([], torch.ones(2)), "samples is empty"),
        (lambda: assert_samples_match([2], torch.ones(2)), r"outside \[0, 2\)"),
        (lambda: expected_distribution(torch.ones(2, 3)), r"logits of shape \(2, 3\)"),
    ],
)
def test_bad_inputs_to_the_checks_are_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()
