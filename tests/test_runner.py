"""The runner fixture drives a real SGLang ModelRunner; checked against HF and for clean teardown."""

import gc
import multiprocessing
import os
import shutil
import signal
import threading
import weakref
from pathlib import Path

import pytest
import torch
from model_damage import shorten_tensor

from pytest_sglang_runner.errors import RunnerBuildError

BATCH = [
    [0, 570, 577, 417, 579, 18, 509, 417, 225, 4, 500, 2],
    [0, 5, 6, 2],
    [0, 17, 42, 99, 123, 7, 8, 2],
]


def test_runner_is_a_live_sglang_model_runner(runner, sglang_live):
    from sglang.srt.model_executor.model_runner import ModelRunner

    assert isinstance(runner, ModelRunner)
    assert type(runner.model).__name__ == "RobertaForMaskedLM"
    assert torch.distributed.is_initialized()
    assert sglang_live.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_logits_and_hidden_states_match_hf(sglang_forward, hf_model, runner):
    result = sglang_forward(BATCH)
    tolerance = 1e-5 if runner.device == "cpu" else 5e-3  # triton on GPU computes in TF32
    for ids, logits, hidden in zip(BATCH, result.logits, result.hidden_states):
        with torch.no_grad():
            reference = hf_model(torch.tensor([ids]), output_hidden_states=True)
        assert logits.shape == (len(ids), hf_model.config.vocab_size)
        assert (logits.float().cpu() - reference.logits[0]).abs().max().item() <= tolerance
        assert (hidden.float().cpu() - reference.hidden_states[-1][0]).abs().max().item() <= tolerance


def test_packed_embeddings_equal_sglangs_per_sequence_loop(runner):
    """The kit's RoBERTa embeds the packed batch in one pass (no host round trip per sequence): same bits."""
    from types import SimpleNamespace

    from pytest_sglang_runner.models.roberta_mlm import packed_embeddings

    embeddings = runner.model.roberta.embeddings
    sequences = BATCH + [[0, 5, embeddings.padding_idx, 6, 2]]  # a pad inside a sequence: HF's position rule
    ids = torch.tensor([t for seq in sequences for t in seq], device=runner.device)
    positions = torch.cat([torch.arange(len(seq)) for seq in sequences]).to(runner.device)
    seq_lens = torch.tensor([len(seq) for seq in sequences], device=runner.device)
    with torch.no_grad():
        sglangs = embeddings(ids, seq_lens, positions, SimpleNamespace(token_type_ids=None))
        kits = packed_embeddings(embeddings, ids, positions)
    assert torch.equal(kits, sglangs)


@pytest.mark.sglang_gpu(1)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_add_layer_norm_matches_the_unfused_ops(dtype):
    """The kit's RoBERTa encoder fuses residual add + LayerNorm on CUDA: same values to the dtype's rounding."""
    from pytest_sglang_runner.models.fused import add_layer_norm

    g = torch.Generator(device="cuda").manual_seed(0)
    norm = torch.nn.LayerNorm(1024, eps=1e-5).to("cuda", dtype)
    with torch.no_grad():
        norm.weight.normal_(generator=g)
        norm.bias.normal_(generator=g)
        x, residual = (torch.randn(333, 1024, device="cuda", dtype=dtype, generator=g) for _ in range(2))
        expected, fused = norm(x + residual), add_layer_norm(x, residual, norm)
    tolerance = 2**-7 if dtype == torch.bfloat16 else 1e-5  # one bf16 ulp, relative
    assert ((fused.float() - expected.float()).abs() / (1 + expected.float().abs())).max().item() <= tolerance


def test_model_call_projects_only_the_requested_rows(sglang_forward, runner):
    """A batch that names rows gets the LM head on those rows only, with the full forward's values."""
    from pytest_sglang_runner.sglang_compat import batches, graphs

    free_before = batches.free_kv_slots(runner)
    full = sglang_forward(BATCH).packed_logits
    rows = [3, 12, 17]
    call = graphs.ModelCall(runner, BATCH, rows)
    try:
        selected = call().logits
    finally:
        call.release()
    assert selected.shape == (len(rows), full.shape[1])
    tolerance = 1e-5 if runner.device == "cpu" else 5e-3
    assert (selected.float() - full[rows].float()).abs().max().item() <= tolerance
    assert batches.free_kv_slots(runner) == free_before  # slots given back


def test_texts_go_through_the_model_tokenizer(sglang_forward):
    text = "the film was great . It was <mask> ."
    ids = sglang_forward.tokenizer(text)["input_ids"]
    assert torch.equal(sglang_forward(text).logits[0], sglang_forward([ids]).logits[0])


def test_a_prepared_batch_runs_twice_with_identical_output(sglang_forward):
    prepared = sglang_forward.prepare(BATCH)
    try:
        first = sglang_forward.run(prepared).packed_logits.clone()
        second = sglang_forward.run(prepared).packed_logits
    finally:
        sglang_forward.release(prepared)
    assert torch.equal(first, second)
    with pytest.raises(RuntimeError, match="released"):
        sglang_forward.run(prepared)


def test_kv_pool_is_empty_between_forwards(sglang_forward, runner):
    free_before = runner.token_to_kv_pool_allocator.available_size()
    sglang_forward(BATCH)
    assert runner.token_to_kv_pool_allocator.available_size() == free_before


@pytest.mark.sglang(max_total_tokens=1024)
def test_marker_builds_a_runner_with_its_config(sglang_live, runner):
    assert sglang_live.spec.max_total_tokens == 1024
    assert runner.max_total_num_tokens <= 1024


def test_sglang_server_side_effects_stay_out_of_pytest(runner):
    # Whatever the process inherited (SIG_DFL, or SIG_IGN under a shell's background job), never
    # SGLang's Python handler that kills the process tree.
    assert not callable(signal.getsignal(signal.SIGQUIT))
    assert multiprocessing.get_start_method(allow_none=True) != "spawn"


@pytest.fixture
def runner_port_locks(request):
    """The port lock files this process holds open, less those of a live Engine or server (an
    earlier test's ``sglang_engine`` / ``sglang_server`` keeps its ports for the session)."""
    from pytest_sglang_runner.plugin import services_key
    from pytest_sglang_runner.ports import LOCK_DIR

    services = request.config.stash[services_key]

    def held() -> list[str]:
        links = (os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd"))
        ours = [link for link in links if link.startswith(str(LOCK_DIR.resolve()))]
        return [link for link in ours if int(Path(link).stem) not in services.held_ports]

    return held


def _process_resources():
    import psutil

    gc.collect()
    process = psutil.Process()
    return process.memory_info().rss, threading.active_count(), len(os.listdir("/proc/self/fd"))


def test_three_build_teardown_cycles_leave_rss_threads_and_fds_flat(runner_factory, runner_port_locks):
    measurements = []
    for cycle in range(4):  # the first cycle warms caches; the next three must be flat
        live = runner_factory.get(max_total_tokens=512 + cycle)
        ports = live.reservations
        live.forward(BATCH)
        freed = weakref.ref(live.model_runner)
        del live
        runner_factory.close()
        gc.collect()
        assert freed() is None, "the runner outlived its teardown"
        assert not torch.distributed.is_initialized()
        assert not any(reservation.held for reservation in ports)
        assert runner_port_locks() == []
        measurements.append(_process_resources())
    rss, threads, fds = zip(*measurements[1:])
    assert max(rss) - min(rss) < 64 * 2**20, rss
    assert len(set(threads)) == 1, threads
    assert len(set(fds)) == 1, fds


def test_a_build_that_fails_half_way_is_torn_down(runner_factory, sglang_model_path, tmp_path, runner_port_locks):
    broken = tmp_path / "broken"
    shutil.copytree(sglang_model_path, broken)
    shorten_tensor(broken, "roberta.encoder.layer.0.output.dense.weight")  # the loader, not the file check, finds it
    runner_factory.close()
    with pytest.raises(RunnerBuildError, match="building the SGLang runner failed"):
        runner_factory.get(model=str(broken))
    assert not torch.distributed.is_initialized()
    assert runner_port_locks() == []
    with pytest.raises(RunnerBuildError):  # remembered: no second slow attempt
        runner_factory.get(model=str(broken))
    assert runner_factory.get().forward(BATCH[:1]).logits[0].isfinite().all()


def test_a_build_that_fails_in_the_loader_leaves_torchs_default_dtype(runner_factory, sglang_model_path, tmp_path):
    """SGLang 0.5.17 sets the model's dtype as torch's default while it loads and does not put it
    back when the loader raises: every later test would make bfloat16 tensors by default."""
    broken = tmp_path / "broken"
    shutil.copytree(sglang_model_path, broken)
    shorten_tensor(broken, "roberta.encoder.layer.0.output.dense.weight")
    assert torch.get_default_dtype() == torch.float32
    with pytest.raises(RunnerBuildError):
        runner_factory.get(model=str(broken), dtype="bfloat16")
    assert torch.get_default_dtype() == torch.float32


@pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="TP=2 on CUDA needs 2 GPUs")
@pytest.mark.sglang(tp=2)
def test_tensor_parallel_runner_matches_tp1(sglang_forward, hf_model, runner):
    result = sglang_forward(BATCH)
    tolerance = 1e-5 if runner.device == "cpu" else 5e-3
    for ids, logits in zip(BATCH, result.logits):
        with torch.no_grad():
            reference = hf_model(torch.tensor([ids])).logits[0]
        assert (logits.float().cpu() - reference).abs().max().item() <= tolerance


@pytest.mark.sglang_gpu(1)
def test_gpu_memory_returns_to_baseline_after_teardown(runner_factory):
    def cycle():
        live = runner_factory.get(max_total_tokens=2048)
        live.forward(BATCH)
        in_use = torch.cuda.memory_allocated()
        del live
        runner_factory.close()
        return in_use

    cycle()  # SGLang allocates some process-wide buffers once, on first use: not a leak
    baseline = torch.cuda.memory_allocated()
    for _ in range(2):
        assert cycle() > baseline
        assert torch.cuda.memory_allocated() == baseline


def _listening_sockets():
    import psutil

    return [c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.mark.parametrize(
    "tp",
    [
        1,
        pytest.param(
            2, marks=pytest.mark.skipif(0 < torch.cuda.device_count() < 2, reason="TP=2 on CUDA needs 2 GPUs")
        ),
    ],
)
def test_every_listening_socket_is_loopback(runner_factory, tp, record_property):
    """The dist rendezvous (torch's TCPStore) included: it would listen on every interface by itself."""
    live = runner_factory.get(tp=tp)
    live.forward(BATCH)
    while_live = _listening_sockets()
    assert any(address.port == live.reservations[0].port for address in while_live)  # the rendezvous is there
    runner_factory.close()
    after = _listening_sockets()
    record_property("listeners_while_live", len(while_live))
    record_property("listeners_beyond_loopback", len([a for a in while_live + after if a.ip != "127.0.0.1"]))
    record_property("listeners_after_close", len(after))
    assert [a for a in while_live if a.ip != "127.0.0.1"] == []
    assert after == []


def test_model_call_gives_a_decoders_next_token_logits(runner_factory):
    """`ModelCall` is not masked-LM only: a decoder's direct call equals ``ModelRunner.forward``."""
    from pytest_sglang_runner.sglang_compat import graphs

    live = runner_factory.get(model="embedded-llama", dtype="bfloat16" if torch.cuda.is_available() else "float32")
    prompts = [[1, 5, 6, 7], [1, 8, 9]]
    expected = live.forward(prompts).next_token_logits
    call = graphs.ModelCall(live.model_runner, prompts)
    try:
        assert torch.equal(call().next_token_logits, expected)
    finally:
        call.release()
