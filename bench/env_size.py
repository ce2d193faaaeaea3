"""What a virtual environment holds: its size (as `du -s` counts it), its largest packages and its
number of Python files (what pip byte-compiles unless told --no-compile).

    python bench/env_size.py VENV [TOP]

docs/install.md and docs/cpu-ci.md quote it for a full install and for bench/cpu_install.sh.
"""

from __future__ import annotations

import os
import sys
from collections import defaultdict
from pathlib import Path


def disk_bytes(path: Path) -> int:
    """Allocated bytes, as du counts them (hard links once)."""
    seen, total = set(), 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(root, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def report(venv: Path, top: int = 8) -> list[str]:
    (site,) = venv.glob("lib/python3*/site-packages")
    by_package: dict[str, int] = defaultdict(int)
    for entry in site.iterdir():
        if entry.name.endswith((".dist-info", ".pth")) or entry.name == "__pycache__":
            continue
        # nvidia/* are separate wheels under one namespace: count them as one, as the docs do
        by_package[entry.name.removesuffix(".py")] += (
            disk_bytes(entry) if entry.is_dir() else entry.lstat().st_blocks * 512
        )
    python_files = sum(1 for _ in site.rglob("*.py"))
    gb = 1e9
    lines = [f"{venv}: {disk_bytes(venv) / gb:.1f} GB, {python_files} .py files under {site.name}"]
    for name, size in sorted(by_package.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {name:28} {size / gb:5.2f} GB")
    return lines


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    print("\n".join(report(Path(sys.argv[1]), *map(int, sys.argv[2:3]))))
