#!/usr/bin/env bash
# CPU-only install of the kit and its test extras, for CI machines without a GPU (docs/install.md,
# "CPU-only CI"): CPU torch instead of the CUDA build, SGLang without its CUDA kernels, and only
# the Python packages SGLang imports to build and run a CPU ModelRunner.
#
#   bash bench/cpu_install.sh VENV        (creates VENV with python3, or $PYTHON)
#
# Python 3.11, Linux x86_64 (torch 2.13.0+cpu is the CPU wheel at hand, in /opt/wheels here;
# elsewhere add --extra-index-url https://download.pytorch.org/whl/cpu through PIP_EXTRA_INDEX_URL).
# Every version below is pinned: these are the versions the CPU figures in docs/install.md come from.
set -euo pipefail
venv=${1:?usage: bash bench/cpu_install.sh VENV}
root=$(cd "$(dirname "$0")/.." && pwd)
start=$(date +%s)

"${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"
pip() { PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off "$py" -m pip "$@" 2>&1 \
  | { grep -vE "^WARNING: Location 'file://|requires torch==2\.14\.1, but you have torch" || true; }; }

constraints="$venv/cpu-constraints.txt"
cat >"$constraints" <<'EOF'
torch==2.13.0+cpu
# PyPI's torchvision is a CUDA build; 0.28.0 is the release made for torch 2.13 (see the patch below)
torchvision==0.28.0
# torch 2.14.1's own pin; SGLang imports triton at import time, even on CPU
triton==3.8.0
sglang==0.5.23
# SGLang 0.5.23's own pins
transformers==5.19.0
tokenizers==0.23.2
apache-tvm-ffi==0.1.11
compressed-tensors==0.18.0
openai==2.8.0
sentencepiece==0.2.1
python-dateutil<3
EOF

# 1. CPU torch first, so that nothing later can pull the CUDA build (the constraint pins it).
pip install -c "$constraints" torch==2.13.0+cpu

# 2. SGLang without its dependencies (they name torch==2.14.1 and the CUDA kernel packages).
pip install -c "$constraints" --no-deps sglang==0.5.23

# 3. What SGLang 0.5.23 imports to build and run a CPU ModelRunner (found by importing
#    sglang.srt.model_executor.model_runner and the model modules until nothing was missing).
pip install -c "$constraints" \
  torchvision triton transformers tokenizers \
  orjson pybase64 requests starlette msgspec pyzmq ipython aiohttp dill apache-tvm-ffi \
  sentencepiece compressed-tensors gguf openai partial-json-parser uvicorn fastapi einops

# 4. torchvision's C ops are built against CUDA torch and do not load here; torchvision 0.28.0
#    then fails at import ("operator torchvision::nms does not exist": two register_fake calls
#    are not guarded by _has_ops() as the others are). SGLang imports torchvision
#    unconditionally (sglang.srt.configs -> nano_nemotron_vl -> multimodal.internvl_utils), so
#    guard those two calls; the kit never uses torchvision's ops.
"$py" - <<'EOF'
import pathlib, re, sysconfig
path = pathlib.Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
text = path.read_text()
patched, n = re.subn(r'^@(torch\.library\.register_fake\("torchvision::\w+"\))$',
                     r"@(\1 if torchvision.extension._has_ops() else (lambda f: f))", text, flags=re.M)
if n:
    path.write_text(patched)
print(f"torchvision: guarded {n} register_fake call(s)")
EOF

# 5. The kit itself (editable, no dependencies: they would name the CUDA stack through sglang),
#    then its own dependencies and the test extra, read from pyproject.toml.
pip install --no-deps -e "$root"
deps=$("$py" - "$root/pyproject.toml" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
names = project["dependencies"] + project["optional-dependencies"]["test"]
print(" ".join(d for d in names if not d.startswith(("sglang", "torch"))))
EOF
)
# shellcheck disable=SC2086
pip install -c "$constraints" $deps

"$py" -c "import sglang, torch, torchvision, triton, pytest_sglang_runner; print('sglang', sglang.__version__, 'torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "cpu_install: $venv in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
