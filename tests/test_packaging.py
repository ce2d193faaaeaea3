"""Packaging from a user's side (docs/install.md): the wheel's contents and metadata, and the
plugin loading from a wheel, a source directory or a git URL installed into a fresh virtual
environment. Real pip and pytest subprocesses, no mocks.

The fresh environments borrow this environment's site-packages (SGLang, torch, pytest) through a
``.pth`` line, so nothing heavy is installed; the kit itself comes only from that install. The
``.pth`` files inside the borrowed directory are not processed, so this environment's editable
install of the kit is not importable there (its metadata is visible, which is why each check
asks where the plugin module was loaded from).
"""

from __future__ import annotations

import configparser
import email.parser
import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from filelock import FileLock

ROOT = Path(__file__).resolve().parents[1]
URLS = {"Homepage", "Documentation", "Changelog", "Issues"}

# What the user's project looks like: one test that needs the plugin but no runner, one that needs
# a runner (skipped by --sglang-skip, so nothing is built: a build costs 15 s and more).
USER_TESTS = """
import os
import sys


def test_the_plugin_comes_from_this_environment(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("sglang_runner")
    assert plugin is not None, "the pytest11 entry point did not register the plugin"
    prefix = os.path.realpath(sys.prefix)
    assert os.path.realpath(plugin.__file__).startswith(prefix + os.sep), plugin.__file__
    assert pytestconfig.getoption("--sglang-skip") is True


def test_a_runner_test(runner):
    raise AssertionError("--sglang-skip should have skipped this")
"""


def _run(cmd, *, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHON"))}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


def _build_wheel(out: Path) -> Path:
    """Build from a copy of the source tree: an in-place build writes build/ and *.egg-info into
    the checkout, which this environment's editable install and parallel workers share."""
    source = out / "src"
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".device", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.pyc"
        ),
    )
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", out / "dist", source])
    (wheel,) = (out / "dist").glob("pytest_sglang_runner-*.whl")
    return wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The kit's wheel, built once per run (xdist workers share it through the common base temp);
    the copy of the source tree it was built from is ``wheel.parents[1] / "src"``."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    out = shared / "packaging-wheel"
    with FileLock(str(shared / "packaging-wheel.lock")):
        built = sorted((out / "dist").glob("pytest_sglang_runner-*.whl")) if out.exists() else []
        if built:
            return built[0]
        shutil.rmtree(out, ignore_errors=True)
        return _build_wheel(out)


def _fresh_venv(path: Path) -> Path:
    """A venv without pip; returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", path])
    return path / "bin" / "python"


def _borrow_site_packages(python: Path) -> None:
    """Let the fresh venv import this environment's packages (after its own)."""
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip()
    (Path(purelib) / "borrowed-site-packages.pth").write_text("\n".join(site.getsitepackages()) + "\n")


def _pip_install_into(python: Path, *args) -> None:
    """This environment's pip, installing into the fresh venv (which has none of its own)."""
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", *args])


def _check_the_plugin_loads(python: Path, project: Path) -> None:
    where = _run(
        [python, "-c", "import pytest_sglang_runner; print(pytest_sglang_runner.__file__)"], cwd=project
    ).stdout.strip()
    venv = os.path.realpath(python.parent.parent)
    assert os.path.realpath(where).startswith(venv + os.sep), f"pytest_sglang_runner came from {where}, not from {venv}"

    pytest_cmd = [python, "-m", "pytest", "-p", "no:cacheprovider"]
    assert "--sglang-model" in _run([*pytest_cmd, "--help"], cwd=project).stdout
    assert "@pytest.mark.sglang(" in _run([*pytest_cmd, "--markers"], cwd=project).stdout

    (project / "test_user.py").write_text(USER_TESTS)
    result = _run([*pytest_cmd, "-rs", "--sglang-skip", "test_user.py"], cwd=project)
    assert re.search(r"^sglang-runner: SGLang \d+\.\d+\.\d+; model=embedded-roberta", result.stdout, re.M), (
        result.stdout
    )
    assert re.search(r"SKIPPED \[1\] .*--sglang-skip", result.stdout), result.stdout
    assert re.search(r"\b1 passed, 1 skipped\b", result.stdout), result.stdout


def test_the_wheel_ships_the_package_typed_with_its_entry_point_and_no_tests(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        entry_points = configparser.ConfigParser()
        entry_points.read_string(archive.read(f"{dist_info}/entry_points.txt").decode())

    assert "pytest_sglang_runner/py.typed" in names
    assert "pytest_sglang_runner/plugin/__init__.py" in names
    assert f"{dist_info}/licenses/LICENSE" in names
    assert entry_points["pytest11"]["sglang_runner"] == "pytest_sglang_runner.plugin"
    tops = {n.split("/")[0] for n in names}
    assert tops == {"pytest_sglang_runner", dist_info}, f"unexpected top-level entries: {sorted(tops)}"
    assert not [n for n in names if re.search(r"(^|/)(tests|conftest_examples|bench)/|(^|/)conftest\.py$", n)]


def test_the_wheel_metadata_has_a_license_expression_and_project_urls(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())

    assert metadata["Name"] == "pytest-sglang-runner"
    assert tuple(int(p) for p in metadata["Metadata-Version"].split(".")) >= (2, 4)
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert not [c for c in metadata.get_all("Classifier") if c.startswith("License ::")]
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    urls = dict(line.split(", ", 1) for line in metadata.get_all("Project-URL"))
    assert set(urls) == URLS
    assert all(
        url.startswith("https://github.com/pytest-sglang-runner/pytest-sglang-runner") for url in urls.values()
    ), urls
    assert {"xdist", "mezo", "test"} <= set(metadata.get_all("Provides-Extra"))


@pytest.mark.parametrize("source", ["wheel", "directory"])
def test_an_install_in_a_fresh_venv_registers_the_plugin_from_there(wheel, source, tmp_path):
    """docs/install.md's `pip install dist/pytest_sglang_runner-*.whl` and `pip install ./CHECKOUT`."""
    python = _fresh_venv(tmp_path / "venv")
    # a directory is built first, in isolation (setuptools from the index); the wheel needs no index.
    # Installed before site-packages are borrowed, so that pip sees no other copy of the kit (it
    # would try to uninstall this environment's editable one).
    _pip_install_into(python, *(["--no-index", wheel] if source == "wheel" else [wheel.parents[1] / "src"]))
    _borrow_site_packages(python)
    project = tmp_path / "project"
    project.mkdir()
    _check_the_plugin_loads(python, project)


def test_a_git_url_install_in_a_fresh_venv_registers_the_plugin_from_there(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0 or not (ROOT / ".git").exists():
        pytest.skip(f"{ROOT} is not a git checkout with a commit")
    python = _fresh_venv(tmp_path / "venv")
    # pip clones the repository and builds its committed HEAD (build isolation: setuptools from the
    # index). A bare URL: pip 23's PEP 508 parser refuses "NAME @ git+file:///PATH" (no host).
    _pip_install_into(python, f"git+file://{ROOT}")
    _borrow_site_packages(python)
    project = tmp_path / "project"
    project.mkdir()
    _check_the_plugin_loads(python, project)
