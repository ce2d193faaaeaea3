"""Golden files: a generation's tokens and logprobs recorded once, committed, and compared on later
runs by the kit's logprob rules (`compare`): "did anything move since last week's GPU run?".

One JSON file per test module, ``<test dir>/__sglang_snapshots__/<module stem>.json``, holds that
module's entries by test (its node id past the file) and snapshot name. Each entry carries the
`SnapshotKey` it was recorded under: the model's fingerprint, the SGLang version, the device and
the dtype. An entry of another key is not compared: the test fails naming both keys, because a
skip would pass a CI job quietly while it checks nothing; ``match="model"`` compares across SGLang
versions, devices and dtypes on purpose ("did SGLang 0.5.23 change anything against 0.5.17?").

Model-independent: nothing here imports SGLang, torch or pytest; the plugin (`plugin.snapshots`)
builds the key from the test's runner and tells the store what ran.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from filelock import FileLock

from .compare import assert_tokens_equal, format_mismatches, logprob_mismatches
from .results import Generation, TokenLogprob

SNAPSHOT_DIR = "__sglang_snapshots__"
UPDATE_OPTION = "--sglang-snapshot-update"
FORMAT = 1
KEY_FIELDS = ("model", "sglang", "device", "dtype")
NAMES = ("this run", "recorded")  # the two sides in a failure's table
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class SnapshotKey:
    """What a recording depends on besides the test: which model, SGLang, device and dtype made it."""

    model: str  # `model_fingerprint`
    sglang: str  # the installed version
    device: str  # "cpu", or the CUDA device's name ("NVIDIA H200")
    dtype: str  # the resolved one: "float32", "bfloat16", ...

    def describe(self) -> str:
        return " ".join(f"{name}={getattr(self, name)}" for name in KEY_FIELDS)

    def differing(self, other: SnapshotKey, fields: Iterable[str]) -> list[str]:
        return [name for name in fields if getattr(self, name) != getattr(other, name)]


def model_fingerprint(model_path: str | os.PathLike) -> str:
    """A short hash of the checkpoint's config.json and its weight files' names and sizes: cheap
    (reading gigabytes of weights per test would cost more than the test), and a checkpoint
    changed in place at the same sizes still shows up, in the comparison itself.
    ``transformers_version`` is left out: re-saving a checkpoint does not change the model."""
    directory = Path(model_path)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    if isinstance(config, dict):
        config.pop("transformers_version", None)
    weights = sorted(
        f"{path.name}:{path.stat().st_size}" for path in directory.iterdir() if path.suffix in WEIGHT_SUFFIXES
    )
    text = json.dumps([config, weights], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Generations as JSON
# ---------------------------------------------------------------------------------------------


def _position_to_json(entry: TokenLogprob | None) -> list | None:
    """``[token, logprob, [[token, logprob], ...]]``: the top-k as pairs, best first (JSON keys are
    strings; the token ids stay numbers)."""
    return None if entry is None else [entry.token_id, entry.logprob, [[t, p] for t, p in entry.top.items()]]


def _position_from_json(entry: list | None) -> TokenLogprob | None:
    return None if entry is None else TokenLogprob(entry[0], entry[1], {t: p for t, p in entry[2]})


LOGPROB_FIELDS = ("prompt_logprobs", "output_logprobs")


def generation_to_json(generation: Generation) -> dict:
    """Every field of the `Generation`; floats as Python writes them, so reading them back gives the same."""
    data = {}
    for name in (f.name for f in dataclasses.fields(Generation)):
        value = getattr(generation, name)
        if name in LOGPROB_FIELDS and value is not None:
            value = [_position_to_json(entry) for entry in value]
        data[name] = value
    return data


def generation_from_json(data: dict) -> Generation:
    """A `Generation` again; a field the file lacks (recorded before the field existed) gets its default."""
    names = {f.name for f in dataclasses.fields(Generation)}
    values = {name: value for name, value in data.items() if name in names}
    for name in LOGPROB_FIELDS:
        if values.get(name) is not None:
            values[name] = [_position_from_json(entry) for entry in values[name]]
    return Generation(**values)


def _depth(value) -> int:
    return 1 + max((_depth(v) for v in value), default=0) if isinstance(value, list) else 0


def _dumps(value, indent: str = "") -> str:
    """JSON with one line per token position (a diff of a re-recorded file shows which moved)."""
    inner = indent + "  "
    if isinstance(value, dict) and any(isinstance(v, (dict, list)) for v in value.values()):
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}" if items else "{}"
    if isinstance(value, list) and (_depth(value) > 3 or any(isinstance(v, dict) for v in value)):
        return "[\n" + ",\n".join(inner + _dumps(v, inner) for v in value) + f"\n{indent}]" if value else "[]"
    return json.dumps(value)


def read_snapshot_file(path: Path) -> dict[str, dict[str, dict]]:
    """A module's entries, test -> snapshot name -> ``{"key": ..., "generations": [...]}``; {} when none."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ValueError(
            f"{path}: not a snapshot file ({exc}); repair it, or delete it and run pytest with {UPDATE_OPTION}"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(
            f"{path}: not a snapshot file of format {FORMAT}; delete it and run pytest with {UPDATE_OPTION}"
        )
    return data["tests"]


def write_snapshot_file(path: Path, tests: dict[str, dict[str, dict]]) -> None:
    """Sorted, whole or not at all (written beside and renamed: a reader never sees half a file);
    a module with no entries left has no file."""
    if not any(tests.values()):
        path.unlink(missing_ok=True)
        return
    ordered = {test: dict(sorted(names.items())) for test, names in sorted(tests.items()) if names}
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    staging.write_text(_dumps({"format": FORMAT, "tests": ordered}) + "\n")
    os.replace(staging, path)


def _file_lock(path: Path) -> FileLock:
    """One lock per snapshot file, across xdist workers and concurrent runs; kept out of the
    snapshot directory so that nobody commits it."""
    directory = Path(tempfile.gettempdir()) / "pytest-sglang-runner-snapshots"
    directory.mkdir(exist_ok=True)
    return FileLock(str(directory / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.lock"))


# ---------------------------------------------------------------------------------------------
# One test's snapshots, and the session's store
# ---------------------------------------------------------------------------------------------


def _fields(match: str | Sequence[str]) -> tuple[str, ...]:
    fields = (match,) if isinstance(match, str) else tuple(match)
    unknown = [name for name in fields if name not in KEY_FIELDS]
    if unknown or not fields:
        raise ValueError(
            f"assert_match(match={match!r}): expected one or more of {', '.join(KEY_FIELDS)} "
            '(match="model" compares across SGLang versions, devices and dtypes)'
        )
    return fields


def _has_top_k(generations: Sequence[Generation]) -> bool:
    return any(entry.top for g in generations for entry in g.output_logprobs or ())


def differences(
    ours: Sequence[Generation], recorded: Sequence[Generation], exact_tokens: bool = False, **rules
) -> str | None:
    """Why ``ours`` does not match ``recorded`` (a table), or None. With top-k logprobs, the rank
    and tolerance rules (``rules``: `compare.logprob_mismatches`' keywords); without, the tokens
    exactly, as also with ``exact_tokens=True``."""
    if len(ours) != len(recorded):
        return f"{len(ours)} generations against {len(recorded)} recorded (were prompts added or removed?)"
    for index, (a, b) in enumerate(zip(ours, recorded)):
        if a.prompt_ids != b.prompt_ids:
            return f"sequence {index}: prompt ids {a.prompt_ids} against {b.prompt_ids} recorded (another prompt or tokenizer)"
    if _has_top_k(ours) != _has_top_k(recorded):
        side = "this run" if _has_top_k(ours) else "the recording"
        return f"only {side} has top-k logprobs (was top_logprobs changed?)"
    problems = []
    if rules or _has_top_k(ours):
        mismatches = logprob_mismatches(ours, recorded, names=NAMES, **rules)
        if mismatches:
            problems.append(
                f"logprobs disagree at {len(mismatches)} position(s):\n{format_mismatches(mismatches, NAMES)}"
            )
    if exact_tokens or not _has_top_k(ours):
        try:
            assert_tokens_equal(ours, recorded, names=NAMES)
        except AssertionError as exc:
            problems.append(str(exc))
    return "\n".join(problems) or None


@dataclass
class Snapshot:
    """One test's snapshots: what the ``sglang_snapshot`` fixture gives a test."""

    store: SnapshotStore = field(repr=False)
    path: Path  # the module's snapshot file
    test: str  # the test's node id past the file: "test_greedy", "TestX::test_y[2]"
    key_of: Callable[[], SnapshotKey] = field(repr=False)  # asked at the first assertion (the runner is built by then)
    _key: SnapshotKey | None = field(default=None, init=False, repr=False)
    _names: set[str] = field(default_factory=set, init=False, repr=False)

    @property
    def key(self) -> SnapshotKey:
        if self._key is None:
            self._key = self.key_of()
        return self._key

    def assert_match(
        self,
        generations: Sequence[Generation],
        name: str = "default",
        *,
        match: str | Sequence[str] = KEY_FIELDS,
        exact_tokens: bool = False,
        **rules,
    ) -> None:
        """Fail unless ``generations`` match the entry ``name`` of this test, recorded under the same
        key (``match``: the key fields that must agree; "model" compares across SGLang versions,
        devices and dtypes). With top-k logprobs they are compared by the rank and tolerance rules
        (``rules``: ``prefill_tolerance``, ``decode_tolerance``, ``rank_rule``, ``tolerance_rule``),
        tokens exactly with ``exact_tokens=True`` or without logprobs. Under ``--sglang-snapshot-update``
        an entry that does not match is written instead, and the test passes."""
        __tracebackhide__ = True
        fields = _fields(match)
        if name in self._names:
            raise ValueError(
                f"assert_match(name={name!r}) twice in {self.test}: give each snapshot of a test its own name"
            )
        self._names.add(name)
        self.store.use(self.path, self.test, name)
        generations = list(generations)
        if self.store.update:
            with _file_lock(self.path):
                tests = read_snapshot_file(self.path)
                if self._problem(name, tests.get(self.test, {}).get(name), generations, fields, exact_tokens, rules):
                    tests.setdefault(self.test, {})[name] = {
                        "key": vars(self.key),
                        "generations": [generation_to_json(g) for g in generations],
                    }
                    write_snapshot_file(self.path, tests)
                    self.store.wrote(self.path, self.test, name)
            return
        entry = self.store.recorded(self.path).get(self.test, {}).get(name)
        problem = self._problem(name, entry, generations, fields, exact_tokens, rules)
        if problem:
            raise AssertionError(problem)

    def _problem(
        self, name: str, entry: dict | None, generations, fields, exact_tokens: bool, rules: dict
    ) -> str | None:
        where = f"snapshot {self.test}::{name}"
        if entry is None:
            return f"no {where} in {self.path}: record it with {UPDATE_OPTION} (and commit the file)"
        recorded_key = SnapshotKey(**entry["key"])
        differing = self.key.differing(recorded_key, fields)
        if differing:
            across = (
                ' or compare across them with assert_match(..., match="model"),' if "model" not in differing else ""
            )
            return (
                f"{where} was recorded with {recorded_key.describe()}; this run has {self.key.describe()} "
                f"(another {', '.join(differing)}): record it again with {UPDATE_OPTION},{across} "
                "or keep one directory of snapshots per machine (ini sglang_snapshot_dir)"
            )
        recorded = [generation_from_json(g) for g in entry["generations"]]
        found = differences(generations, recorded, exact_tokens, **rules)
        if found:
            return (
                f"{where} ({self.path}) no longer matches the recording ({recorded_key.describe()}): {found}\n"
                f"if the change is expected, record it again with {UPDATE_OPTION}"
            )
        return None


def _add(entries: dict[str, dict[str, list[str]]], path: str, test: str, name: str) -> None:
    """One more name in a file -> test -> names record (a test run again, by a rerun plugin, adds none)."""
    names = entries.setdefault(path, {}).setdefault(test, [])
    if name not in names:
        names.append(name)


@dataclass(frozen=True)
class UnusedEntry:
    path: Path
    test: str
    name: str
    test_gone: bool  # the module no longer has the test (else: the test ran and passed without asking for it)


@dataclass
class SnapshotStore:
    """The session's snapshots: reads each module's file once, writes entries under
    ``--sglang-snapshot-update`` (file-locked read-modify-write: xdist workers write their own),
    and keeps what this process saw (`state`, merged across xdist workers) for the end-of-run
    report of entries no test asked for (`unused`)."""

    root: Path  # node ids' files are relative to it (pytest's rootdir)
    directory: str = SNAPSHOT_DIR  # relative to each test file's directory
    update: bool = False
    collected: dict[str, set[str]] = field(default_factory=dict)  # snapshot file -> tests collected
    partial: set[str] = field(default_factory=set)  # files whose module was collected only in part
    passed: dict[str, set[str]] = field(default_factory=dict)  # file -> tests that ran and passed
    failed: dict[str, set[str]] = field(default_factory=dict)  # file -> tests that ran and failed a phase
    used: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # file -> test -> names asked for
    written: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # file -> test -> names written
    unused_entries: list[UnusedEntry] = field(default_factory=list)  # found by `finish`
    _files: dict[Path, dict] = field(default_factory=dict, repr=False)

    def locate(self, node_id: str) -> tuple[Path, str]:
        """A test's snapshot file and its name there."""
        file_part, _, test = node_id.partition("::")
        test_file = (self.root / file_part).resolve()
        return test_file.parent / self.directory / f"{test_file.stem}.json", test

    def snapshot(self, node_id: str, key_of: Callable[[], SnapshotKey]) -> Snapshot:
        return Snapshot(self, *self.locate(node_id), key_of)

    def recorded(self, path: Path) -> dict[str, dict[str, dict]]:
        if path not in self._files:
            self._files[path] = read_snapshot_file(path)
        return self._files[path]

    def use(self, path: Path, test: str, name: str) -> None:
        _add(self.used, str(path), test, name)

    def wrote(self, path: Path, test: str, name: str) -> None:
        _add(self.written, str(path), test, name)

    # What ran: told by the plugin's hooks ------------------------------------------------------

    def collect(self, node_id: str) -> None:
        path, test = self.locate(node_id)
        self.collected.setdefault(str(path), set()).add(test)

    def collected_in_part(self, test_file: Path) -> None:
        """A module not collected whole (a ``path::test`` argument, ``--lf``): its tests missing
        from this run may still exist, so none of its entries counts as gone."""
        self.partial.add(str(self.locate(str(test_file))[0]))

    def outcome(self, node_id: str, passed: bool) -> None:
        path, test = self.locate(node_id)
        (self.passed if passed else self.failed).setdefault(str(path), set()).add(test)

    def state(self) -> dict:
        """What this process saw, as plain lists and dicts (an xdist worker's ``workeroutput``)."""
        return {
            "collected": {path: sorted(tests) for path, tests in self.collected.items()},
            "partial": sorted(self.partial),
            "passed": {path: sorted(tests) for path, tests in self.passed.items()},
            "failed": {path: sorted(tests) for path, tests in self.failed.items()},
            "used": self.used,
            "written": self.written,
        }

    def merge(self, state: dict) -> None:
        for name in ("collected", "passed", "failed"):
            for path, tests in state[name].items():
                getattr(self, name).setdefault(path, set()).update(tests)
        self.partial.update(state["partial"])
        for name in ("used", "written"):
            for path, tests in state[name].items():
                for test, names in tests.items():
                    for entry in names:
                        _add(getattr(self, name), path, test, entry)

    # The end of the run ------------------------------------------------------------------------

    def unused(self) -> list[UnusedEntry]:
        """Entries of the modules that ran which no test asked for: of a test that ran and passed
        without asking for them, or of a test the module no longer has (modules collected whole
        only). A test that failed, was skipped or deselected keeps its entries: it may not have
        reached its assertion."""
        found = []
        for path in sorted(set(self.passed) | set(self.failed)):
            passed = self.passed.get(path, set()) - self.failed.get(path, set())
            used = self.used.get(path, {})
            exists = self.collected.get(path, set())
            try:
                recorded = read_snapshot_file(Path(path))
            except ValueError:  # its tests failed saying so; nothing in it can be judged unused
                continue
            for test, names in recorded.items():
                gone = path not in self.partial and test not in exists
                if test in passed or gone:
                    found += [UnusedEntry(Path(path), test, n, gone) for n in names if n not in used.get(test, ())]
        return found

    def finish(self) -> None:
        """Find the unused entries; under ``--sglang-snapshot-update``, delete them (syrupy's way)."""
        self.unused_entries = self.unused()
        if self.update:
            for path in {entry.path for entry in self.unused_entries}:
                with _file_lock(path):
                    tests = read_snapshot_file(path)
                    for entry in self.unused_entries:
                        if entry.path == path:
                            tests.get(entry.test, {}).pop(entry.name, None)
                    write_snapshot_file(path, tests)

    def summary(self, root: Path) -> list[str]:
        """The terminal's lines: how many entries were written, which are unused (or were deleted)."""

        def shown(path) -> str:
            return os.path.relpath(path, root)

        written = sum(len(names) for tests in self.written.values() for names in tests.values())
        counts = [f"{written} written"] if written else []
        if self.unused_entries:
            done = "deleted" if self.update else f"unused (run pytest with {UPDATE_OPTION} to delete them)"
            counts.append(f"{len(self.unused_entries)} {done}")
        lines = [f"sglang-runner: snapshots: {', '.join(counts)}"] if counts else []
        for path, tests in sorted(self.written.items()):
            entries = ", ".join(f"{test}::{name}" for test, names in sorted(tests.items()) for name in names)
            lines.append(f"sglang-runner:   written to {shown(path)}: {entries}")
        for path in sorted({entry.path for entry in self.unused_entries}):
            entries = ", ".join(
                f"{e.test}::{e.name} ({'its test is gone' if e.test_gone else 'its test did not ask for it'})"
                for e in self.unused_entries
                if e.path == path
            )
            lines.append(f"sglang-runner:   {'deleted from' if self.update else 'unused in'} {shown(path)}: {entries}")
        return lines
