"""The reliability figures of a test run, as the table in docs/reliability.md.

Usage: python -m pytest ... --junitxml=run.xml tests; python bench/reliability_report.py run.xml [...]

Reads the properties the tests record (``record_property``): bad inputs from the usage-error
catalogue (one test case each, clear when it passed) and from the build-time catalogue, faults
and whether the session stayed healthy, build/teardown cycles, concurrent sessions, SIGINT
phases, listening sockets and lock files left.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ElementTree
from collections import defaultdict


def cases(paths):
    for path in paths:
        for case in ElementTree.parse(path).iter("testcase"):
            properties = defaultdict(list)
            for prop in case.iter("property"):
                properties[prop.get("name")].append(prop.get("value"))
            passed = not any(case.find(tag) is not None for tag in ("failure", "error", "skipped"))
            skipped = case.find("skipped") is not None
            yield case.get("name"), passed, skipped, properties


def _number(values):
    return sum(float(value) for value in values)


def report(paths) -> list[str]:
    totals = defaultdict(float)
    cli_tried = cli_clear = 0
    sigint = []
    for _name, passed, skipped, properties in cases(paths):
        if skipped:
            continue
        if "bad_input" in properties:
            cli_tried += 1
            cli_clear += passed
        for key in (
            "build_time_bad_inputs_tried",
            "build_time_bad_inputs_clear",
            "faults_injected",
            "faults_left_the_session_healthy",
            "cycles",
            "rss_growth_per_cycle",
            "fds_growth_per_cycle",
            "threads_growth_per_cycle",
            "sockets_growth_per_cycle",
            "concurrent_sessions",
            "concurrent_runner_processes",
            "concurrent_sessions_passed",
            "listeners_beyond_loopback",
            "listeners_after_close",
            "lock_files_left",
            "sigint_lock_files_left",
        ):
            if key in properties:
                totals[key] += _number(properties[key])
        if "listeners_while_live" in properties:
            totals["listener_checks"] += 1
        if "sigint_phase" in properties:
            sigint.append(
                (
                    properties["sigint_phase"][0],
                    properties["sigint_exit_code"][0],
                    properties["sigint_processes_left"][0],
                    passed,
                )
            )

    def n(key):
        value = totals.get(key, 0.0)
        return f"{value:g}"

    rows = [
        (
            "bad inputs tried / clear errors",
            f"{cli_tried + totals['build_time_bad_inputs_tried']:g} / {cli_clear + totals['build_time_bad_inputs_clear']:g}",
            f"{cli_tried} usage errors (exit 4) at startup + {n('build_time_bad_inputs_tried')} only a build can judge",
        ),
        (
            "faults injected / session healthy after",
            f"{n('faults_injected')} / {n('faults_left_the_session_healthy')}",
            "at each build step and inside tests; healthy = no process group, port lock, child process or GPU memory left, and the next build gives the same logits",
        ),
        (
            "build/teardown cycles",
            n("cycles"),
            f"growth per cycle after the 10th: RSS {n('rss_growth_per_cycle')} MiB, fds {n('fds_growth_per_cycle')}, threads {n('threads_growth_per_cycle')}, sockets {n('sockets_growth_per_cycle')}",
        ),
        (
            "concurrent sessions / passed",
            f"{n('concurrent_sessions')} / {n('concurrent_sessions_passed')}",
            f"{n('concurrent_runner_processes')} processes with a runner at once (xdist workers included), ports disjoint",
        ),
        (
            "SIGINT phases / exit code 2, nothing left",
            f"{len(sigint)} / {sum(1 for s in sigint if s[3])}",
            ", ".join(f"{phase}: exit {code}, {left} process(es) left" for phase, code, left, _ in sigint),
        ),
        (
            "listening sockets beyond loopback",
            n("listeners_beyond_loopback"),
            f"over {n('listener_checks')} runner(s), while live and after close()",
        ),
        ("listening sockets left after close()", n("listeners_after_close"), ""),
        (
            "port lock files left",
            f"{totals['lock_files_left'] + totals['sigint_lock_files_left']:g}",
            "in the inner sessions' lock directories",
        ),
    ]
    lines = ["| figure | value | detail |", "|---|---|---|"]
    lines += [f"| {figure} | {value} | {detail} |" for figure, value, detail in rows]
    return lines


if __name__ == "__main__":
    print("\n".join(report(sys.argv[1:])))
