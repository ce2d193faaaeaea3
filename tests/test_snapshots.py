"""Golden files (`snapshots`, `plugin.snapshots`): entries written under --sglang-snapshot-update,
compared by the logprob rules on later runs, refused under another key, and unused ones reported
and deleted. The store is checked directly (no SGLang); one module of tests runs in three inner
sessions (record, edit and check, update) on embedded-llama."""

from __future__ import annotations

import json
import re
import threading
from importlib.metadata import version

import pytest
import torch

from pytest_sglang_runner import Generation, TokenLogprob
from pytest_sglang_runner.snapshots import (
    SnapshotKey,
    SnapshotStore,
    generation_from_json,
    model_fingerprint,
    read_snapshot_file,
)

KEY = SnapshotKey(model="0123456789abcdef", sglang="0.5.23", device="cpu", dtype="float32")


def _position(token: int, *top: float) -> TokenLogprob:
    return TokenLogprob(token, top[0], {token + i: p for i, p in enumerate(top)})


GENERATIONS = [
    Generation(
        prompt_ids=[0, 5, 9],
        output_ids=[7, 2],
        text=" bad",
        prompt_logprobs=[None, _position(5, -0.1 + 1e-17, -2.5), _position(9, -1 / 3, float("-inf"))],
        output_logprobs=[_position(7, -0.45158493518829346, -1.4664860963821411), _position(2, -1e-3, -9.2)],
        finish_reason="stop",
        decode_steps=1,
    ),
    Generation(
        prompt_ids=[0, 4],
        output_ids=[3, 3],
        prompt_logprobs=[None, _position(4, -2.0, -2.25)],
        output_logprobs=[_position(3, -0.5, -1.0), _position(3, -0.25, -3.0)],
        finish_reason="length",
        decode_steps=2,
        graph_steps=2,
    ),
]


def _store(tmp_path, update=False) -> SnapshotStore:
    return SnapshotStore(tmp_path, update=update)


def _record(tmp_path, node_id: str, generations, name="greedy", key=KEY) -> None:
    _store(tmp_path, update=True).snapshot(node_id, lambda: key).assert_match(generations, name)


def _failure(store: SnapshotStore, node_id: str, generations, key=KEY, **kwargs) -> str:
    with pytest.raises(AssertionError) as failure:
        store.snapshot(node_id, lambda: key).assert_match(generations, "greedy", **kwargs)
    return str(failure.value)


def test_generations_round_trip_exactly_one_line_per_position(tmp_path):
    _record(tmp_path, "test_x.py::test_a", GENERATIONS)
    path = tmp_path / "__sglang_snapshots__" / "test_x.json"
    entry = read_snapshot_file(path)["test_a"]["greedy"]
    assert entry["key"] == vars(KEY)
    assert [generation_from_json(g) for g in entry["generations"]] == GENERATIONS
    assert "[7, -0.45158493518829346, [[7, -0.45158493518829346], [8, -1.4664860963821411]]]," in path.read_text()
    _store(tmp_path).snapshot("test_x.py::test_a", lambda: KEY).assert_match(GENERATIONS, "greedy", exact_tokens=True)


def test_a_missing_entry_fails_naming_the_update_option(tmp_path):
    message = _failure(_store(tmp_path), "test_x.py::test_a", GENERATIONS)
    assert "no snapshot test_a::greedy" in message and "--sglang-snapshot-update" in message
    snapshot = _store(tmp_path, update=True).snapshot("test_x.py::test_a", lambda: KEY)
    snapshot.assert_match(GENERATIONS, "greedy")
    with pytest.raises(ValueError, match=r"assert_match\(name='greedy'\) twice in test_a: give each snapshot"):
        snapshot.assert_match(GENERATIONS, "greedy")


def test_another_key_fails_naming_both_unless_compared_across_with_match_model(tmp_path):
    _record(tmp_path, "test_x.py::test_a", GENERATIONS, key=SnapshotKey(**{**vars(KEY), "sglang": "0.5.17"}))
    message = _failure(_store(tmp_path), "test_x.py::test_a", GENERATIONS)
    assert f"recorded with {KEY.describe().replace('0.5.23', '0.5.17')}; this run has {KEY.describe()}" in message
    assert "(another sglang)" in message and "--sglang-snapshot-update" in message and 'match="model"' in message
    _store(tmp_path).snapshot("test_x.py::test_a", lambda: KEY).assert_match(GENERATIONS, "greedy", match="model")
    other_model = SnapshotKey(**{**vars(KEY), "model": "fedcba9876543210"})
    assert "(another model, sglang)" in _failure(_store(tmp_path), "test_x.py::test_a", GENERATIONS, key=other_model)
    with pytest.raises(ValueError, match=r"match='weights'.*expected one or more of model, sglang, device, dtype"):
        _store(tmp_path).snapshot("test_x.py::test_a", lambda: KEY).assert_match(GENERATIONS, match="weights")


def test_a_changed_result_fails_with_the_rules_table(tmp_path):
    _record(tmp_path, "test_x.py::test_a", GENERATIONS[:1])
    moved = Generation(
        **{**vars(GENERATIONS[0]), "output_logprobs": [_position(7, -0.6, -1.5), _position(2, -1e-3, -9.2)]}
    )
    message = _failure(_store(tmp_path), "test_x.py::test_a", [moved])
    assert "no longer matches the recording" in message and "this run logprob  recorded logprob" in message
    assert re.search(r"\ntolerance +0 +output 0 +7 +7 +-0.6000 +-0.4516 +top-k logprobs differ by 0.148", message)
    shorter = Generation(
        **{**vars(GENERATIONS[0]), "output_ids": [7], "output_logprobs": GENERATIONS[0].output_logprobs[:1]}
    )
    assert "same tokens, but lengths 1 and 2" in _failure(_store(tmp_path), "test_x.py::test_a", [shorter])
    other_prompt = Generation(**{**vars(GENERATIONS[0]), "prompt_ids": [0, 6, 9]})
    assert "another prompt or tokenizer" in _failure(_store(tmp_path), "test_x.py::test_a", [other_prompt])
    _store(tmp_path).snapshot("test_x.py::test_a", lambda: KEY).assert_match([moved], "greedy", decode_tolerance=0.2)


def test_unused_entries_are_those_of_passed_tests_that_did_not_ask_and_of_gone_tests(tmp_path):
    for node_id, name in [
        ("test_a", "asked"),
        ("test_a", "not_asked"),
        ("test_b", "x"),
        ("test_gone", "x"),
        ("test_c", "x"),
    ]:
        _record(tmp_path, f"test_x.py::{node_id}", GENERATIONS, name=name)
    store = _store(tmp_path, update=True)
    for test in ("test_a", "test_b", "test_c"):  # test_c: collected, then deselected (-k): it did not run
        store.collect(f"test_x.py::{test}")
    store.snapshot("test_x.py::test_a", lambda: KEY).assert_match(GENERATIONS, "asked")
    store.outcome("test_x.py::test_a", passed=True)
    store.outcome("test_x.py::test_b", passed=False)  # failed: it may not have reached its assertion
    partial = _store(tmp_path)
    partial.merge(json.loads(json.dumps(store.state())))  # as an xdist worker sends it
    partial.collected_in_part(tmp_path / "test_x.py")  # `pytest test_x.py::test_a`: test_gone may exist
    assert [(e.test, e.name) for e in partial.unused()] == [("test_a", "not_asked")]
    store.finish()
    assert [(e.test, e.name, e.test_gone) for e in store.unused_entries] == [
        ("test_a", "not_asked", False),
        ("test_gone", "x", True),
    ]
    left = read_snapshot_file(tmp_path / "__sglang_snapshots__" / "test_x.json")
    assert {test: sorted(names) for test, names in left.items()} == {
        "test_a": ["asked"],
        "test_b": ["x"],
        "test_c": ["x"],
    }
    assert store.summary(tmp_path) == [
        "sglang-runner: snapshots: 2 deleted",
        "sglang-runner:   deleted from __sglang_snapshots__/test_x.json: "
        "test_a::not_asked (its test did not ask for it), test_gone::x (its test is gone)",
    ]


def test_concurrent_updates_of_one_file_keep_every_entry(tmp_path):
    """xdist workers write their own entries into one module's file: read-modify-write under a file lock."""
    threads = [threading.Thread(target=_record, args=(tmp_path, f"test_x.py::test_{i}", GENERATIONS)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(read_snapshot_file(tmp_path / "__sglang_snapshots__" / "test_x.json")) == [
        f"test_{i}" for i in range(8)
    ]


# ---------------------------------------------------------------------------------------------
# The fixture and the option, in inner sessions
# ---------------------------------------------------------------------------------------------

INNER_DEVICE = (
    ["--sglang-device", "cuda", "--sglang-dtype", "bfloat16"]
    if torch.cuda.is_available()
    else ["--sglang-device", "cpu", "--sglang-dtype", "float32"]
)
INNER_ARGS = (
    "-p",
    "no:cacheprovider",
    "-p",
    "no:xdist",
    "-W",
    "ignore",
    "--sglang-model",
    "embedded-llama",
    *INNER_DEVICE,
)

GOLDEN_TESTS = """
PROMPTS = ["the film was", "the music and the film were very"]


def generate(sglang_forward, max_new_tokens=4):
    return sglang_forward.generate(PROMPTS, max_new_tokens=max_new_tokens, top_logprobs=3)


def test_same(sglang_forward, sglang_snapshot):
    sglang_snapshot.assert_match(generate(sglang_forward), name="greedy", exact_tokens=True)


def test_version(sglang_forward, sglang_snapshot):
    sglang_snapshot.assert_match(generate(sglang_forward), name="greedy")


def test_across(sglang_forward, sglang_snapshot):
    sglang_snapshot.assert_match(generate(sglang_forward), name="greedy", match="model")


def test_logprob(sglang_forward, sglang_snapshot):
    sglang_snapshot.assert_match(generate(sglang_forward), name="greedy")


def test_length(sglang_forward, sglang_snapshot):
    sglang_snapshot.assert_match(generate(sglang_forward, max_new_tokens=%(length)d), name="greedy")
"""
NEW_TEST = """

def test_new(sglang_forward, sglang_snapshot):
    sglang_snapshot.assert_match(generate(sglang_forward), name="greedy")
"""


def _edit_recordings(path) -> None:
    """Another SGLang version for two entries, a moved logprob, an entry no test asks for, a test that is gone."""
    data = json.loads(path.read_text())
    tests = data["tests"]
    for test in ("test_version", "test_across"):
        tests[test]["greedy"]["key"]["sglang"] = "0.5.17"
    first = tests["test_logprob"]["greedy"]["generations"][0]["output_logprobs"][0]
    first[1] -= 0.5
    first[2] = [[token, logprob - 0.5] for token, logprob in first[2]]
    tests["test_across"]["extra"] = tests["test_same"]["greedy"]
    tests["test_gone"] = {"greedy": tests["test_same"]["greedy"]}
    path.write_text(json.dumps(data))


def test_record_check_and_update_a_module_of_golden_tests(pytester, runpytest_forked, embedded_llama):
    pytester.makepyfile(test_golden=GOLDEN_TESTS % {"length": 4})
    path = pytester.path / "__sglang_snapshots__" / "test_golden.json"

    recorded = runpytest_forked(*INNER_ARGS, "--sglang-snapshot-update", timeout=600)
    recorded.assert_outcomes(passed=5)
    recorded.stdout.fnmatch_lines(["sglang-runner: snapshots: 5 written"])
    tests = read_snapshot_file(path)
    assert sorted(tests) == ["test_across", "test_length", "test_logprob", "test_same", "test_version"]
    entry = tests["test_same"]["greedy"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    key = SnapshotKey(model_fingerprint(embedded_llama), version("sglang"), device, INNER_DEVICE[-1])
    assert entry["key"] == vars(key)
    assert [g["prompt_ids"][:1] for g in entry["generations"]] == [[0], [0]]
    assert all(len(g["output_logprobs"]) == len(g["output_ids"]) <= 4 for g in entry["generations"])

    _edit_recordings(path)
    pytester.makepyfile(test_golden=GOLDEN_TESTS % {"length": 2} + NEW_TEST)
    checked = runpytest_forked(*INNER_ARGS, timeout=600)
    checked.assert_outcomes(passed=2, failed=4)  # test_same and test_across pass
    checked.stdout.fnmatch_lines(
        [
            "*test_version::greedy was recorded with *sglang=0.5.17*; this run has *sglang=%s* (another sglang)*"
            % version("sglang"),
            "*test_logprob::greedy * no longer matches the recording*",
            "E       tolerance  0    output 0 * top-k logprobs differ by 0.5 (tolerance 0.06)",
            "*test_length::greedy * no longer matches*",
            "E       rank  0    output 2 * same tokens, but lengths 2 and *",
            "*no snapshot test_new::greedy in *test_golden.json: record it with --sglang-snapshot-update*",
            "sglang-runner: snapshots: 2 unused (run pytest with --sglang-snapshot-update to delete them)",
            "sglang-runner:   unused in __sglang_snapshots__/test_golden.json: test_across::extra (its test did not ask"
            " for it), test_gone::greedy (its test is gone)",
        ]
    )

    updated = runpytest_forked(*INNER_ARGS, "--sglang-snapshot-update", timeout=600)
    updated.assert_outcomes(passed=6)
    updated.stdout.fnmatch_lines(
        [
            "sglang-runner: snapshots: 4 written, 2 deleted",
            "sglang-runner:   written to __sglang_snapshots__/test_golden.json: test_length::greedy,"
            " test_logprob::greedy, test_new::greedy, test_version::greedy",
        ]
    )
    tests = read_snapshot_file(path)
    assert {test: sorted(names) for test, names in tests.items()} == {
        test: ["greedy"]
        for test in ("test_across", "test_length", "test_logprob", "test_new", "test_same", "test_version")
    }
    assert tests["test_across"]["greedy"]["key"]["sglang"] == "0.5.17"  # it matched across versions: kept as recorded
    assert tests["test_version"]["greedy"]["key"]["sglang"] == version("sglang")


def test_an_absolute_snapshot_directory_is_a_usage_error(pytester):
    result = pytester.runpytest("-p", "no:cacheprovider", "-o", "sglang_snapshot_dir=/golden")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*sglang_snapshot_dir = '/golden': give a directory relative to each test file's*"])
