"""Figures the docs quote from a test run's junit XML (the run's own record, committed beside it).

    python bench/junit_report.py RUN.xml --files           passed / skipped / failed and summed test
                                                            time per test file
    python bench/junit_report.py RUN.xml NAME [NAME ...]   time and recorded properties
                                                            (``record_property``) of each test whose
                                                            name contains NAME

docs/numbers.md lists which page quotes what from which run.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from collections import Counter, defaultdict


def testcases(path: str):
    yield from ElementTree.parse(path).iter("testcase")


def outcome(case) -> str:
    for tag, name in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
        if case.find(tag) is not None:
            return name
    return "passed"


def by_file(path: str) -> list[str]:
    counts: dict[str, Counter] = defaultdict(Counter)
    seconds: dict[str, float] = defaultdict(float)
    for case in testcases(path):
        name = case.get("classname", "").split(".")
        module = "/".join(part for part in name if not part[:1].isupper()) + ".py"
        counts[module][outcome(case)] += 1
        seconds[module] += float(case.get("time", 0))
    lines = ["| file | passed | skipped | failed | test time (s) |", "|---|---|---|---|---|"]
    for module in sorted(counts):
        c = counts[module]
        lines.append(
            f"| {module} | {c['passed']} | {c['skipped']} | {c['failed'] + c['error']} | {seconds[module]:.1f} |"
        )
    total = sum(counts.values(), Counter())
    lines.append(
        f"| all | {total['passed']} | {total['skipped']} | {total['failed'] + total['error']} | "
        f"{sum(seconds.values()):.1f} |"
    )
    return lines


def properties(path: str, names: list[str]) -> list[str]:
    lines = []
    for case in testcases(path):
        if any(name in case.get("name", "") for name in names):
            lines.append(
                f"{case.get('classname')}::{case.get('name')} ({outcome(case)}, {float(case.get('time', 0)):.1f} s)"
            )
            lines += [f"    {p.get('name')} = {p.get('value')}" for p in case.iter("property")]
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    run, *rest = sys.argv[1:]
    print("\n".join(by_file(run) if rest == ["--files"] else properties(run, rest)))
