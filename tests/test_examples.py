"""Every example project under conftest_examples/ runs and passes with the options its own header
gives for this machine (on CPU: the GPU ones with --sglang-device cpu; on a GPU: as written, in the
GPU job, bench/run_gpu.sh), and the GitHub Actions example is a valid workflow calling README's
commands."""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "conftest_examples"
ON_CPU = ["--sglang-device", "cpu"]
BFLOAT16 = ["--sglang-dtype", "bfloat16", "--sglang-arg", "enable_fp32_lm_head=true"]
GPUS = torch.cuda.device_count()


@dataclass(frozen=True)
class Project:
    on_cpu: list[str]  # extra arguments on a machine without a GPU
    on_gpu: list[str] | None  # ... and on one with GPUs (None: a CPU-only project)
    gpus: int  # how many GPUs it is written for
    passed: int  # expected "N passed"


PROJECTS = {
    "single_gpu": Project(ON_CPU, [], 1, 4),
    "xdist": Project(ON_CPU, [], 2, 5),
    "tp2": Project(ON_CPU, [], 2, 2),
    "cpu_ci": Project([], None, 0, 2),
    "decoder_hf": Project([], BFLOAT16, 0, 4),
}


def test_every_example_folder_is_run_with_the_options_its_header_gives():
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert folders == set(PROJECTS) | {"github_actions"}
    gpu_line = " ".join(BFLOAT16)
    assert gpu_line in (EXAMPLES / "decoder_hf" / "pytest.ini").read_text()
    assert gpu_line in (EXAMPLES / "decoder_hf" / "test_decoder_example.py").read_text()


@pytest.mark.parametrize("folder", sorted(PROJECTS))
def test_the_example_project_passes(folder, tmp_path, start_pytest):
    example = PROJECTS[folder]
    if GPUS and example.on_gpu is None:
        pytest.skip(
            f"{folder} is for a CPU-only install (bench/cpu_install.sh); SGLang's CUDA build runs no CPU runner"
        )
    if GPUS and GPUS < example.gpus:
        pytest.skip(f"{folder} is written for {example.gpus} GPUs; this machine has {GPUS}")
    extra, passed = (example.on_gpu if GPUS else example.on_cpu), example.passed
    project = shutil.copytree(EXAMPLES / folder, tmp_path / folder)
    args = ["-p", "no:cacheprovider", "-W", "ignore", *extra]
    session = start_pytest(
        args,
        cwd=project,
        env=dict(os.environ),
        stdout=tmp_path / "stdout.txt",
        stderr=tmp_path / "stderr.txt",
    )
    code = session.wait(600)
    stdout, stderr = session.output(), (tmp_path / "stderr.txt").read_text()
    if os.environ.get("EXAMPLE_LOGS"):  # the GPU job (bench/run_gpu.sh) keeps each project's own output
        Path(os.environ["EXAMPLE_LOGS"], f"{folder}.log").write_text(f"$ pytest {' '.join(args)}\n{stdout}{stderr}")
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
