"""Every example project under conftest_examples/ runs and passes (on CPU: the GPU ones with
--sglang-device cpu), and the GitHub Actions example is a valid workflow calling README's commands."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "conftest_examples"
ON_CPU = ["--sglang-device", "cpu"]

# folder: (extra arguments on this CPU machine, expected "N passed")
PROJECTS = {
    "single_gpu": (ON_CPU, 4),
    "xdist": (ON_CPU, 5),
    "tp2": (ON_CPU, 2),
    "cpu_ci": ([], 2),
    "decoder_hf": ([], 4),
}


def test_every_example_folder_is_run():
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert folders == set(PROJECTS) | {"github_actions"}


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(),
    reason="the examples are run on CPU here; a GPU machine runs them as written",
)
@pytest.mark.parametrize("folder", sorted(PROJECTS))
def test_the_example_project_passes(folder, tmp_path, start_pytest):
    extra, passed = PROJECTS[folder]
    project = shutil.copytree(EXAMPLES / folder, tmp_path / folder)
    session = start_pytest(
        ["-p", "no:cacheprovider", "-W", "ignore", *extra],
        cwd=project,
        env=dict(os.environ),
        stdout=tmp_path / "stdout.txt",
        stderr=tmp_path / "stderr.txt",
    )
    code = session.wait(600)
    stdout, stderr = session.output(), (tmp_path / "stderr.txt").read_text()
    assert code == 0 and re.search(rf"\b{passed} passed\b", stdout), stdout[-4000:] + stderr[-2000:]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return [re.search(rf"^    ({prefix}.*)$", text, re.M).group(1) for prefix in ("pip install ", r"python -m pytest ")]


def test_the_github_actions_example_runs_the_readme_commands_on_a_gpu_runner():
    workflow = yaml.safe_load((EXAMPLES / "github_actions" / "gpu-tests.yml").read_text())
    job = workflow["jobs"]["gpu"]
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    runs = [step["run"] for step in job["steps"] if "run" in step]
    assert all(command in runs for command in _readme_commands()), (runs, _readme_commands())
    assert True in workflow or "on" in workflow  # YAML 1.1 reads the key `on` as True
