"""The two TP modes (docs/tp.md): replay (rank 0 runs the test, the peers replay the kit's calls)
and every-rank (the test body runs on each rank against its own runner)."""

import pytest
import torch
from sglang.srt.distributed import tensor_model_parallel_all_reduce


def test_replayed_forward(sglang_forward):
    assert sglang_forward("the film was <mask> .").logits[0].isfinite().all()


@pytest.mark.sglang(every_rank=True)
def test_on_every_rank(sglang_rank, sglang_forward):
    device = next(sglang_rank.runner.model.parameters()).device
    total = tensor_model_parallel_all_reduce(torch.tensor([1.0], device=device))
    assert total.item() == sglang_rank.world_size
    assert sglang_forward("the film was <mask> .").logits[0].isfinite().all()
