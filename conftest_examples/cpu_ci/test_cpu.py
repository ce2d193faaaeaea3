"""What runs on a CPU CI machine: the runner, its masked-LM logits, and the same through HF."""

import torch


def test_logits_match_hf(sglang_forward, hf_model):
    ids = [0, 570, 577, 417, 2]
    with torch.no_grad():
        reference = hf_model(torch.tensor([ids])).logits[0]
    assert torch.allclose(sglang_forward([ids]).logits[0], reference, atol=1e-4)


def test_gpu_only_work_is_skipped_here():
    assert not torch.cuda.is_available()
