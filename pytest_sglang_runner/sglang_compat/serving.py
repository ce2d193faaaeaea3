"""SGLang's own Engine and HTTP server, hosted by the kit: what differs between releases there.

The kit runs both in a process of their own (`pytest_sglang_runner.services`), started as
``python -m <host module>``. SGLang spawns its scheduler and detokenizer from that process, and a
spawned child imports its parent's main module (as ``__mp_main__``) before anything else: so the
host module calls `prepare_serving_process` at import, and every SGLang process of the Engine or
server gets what a runner build gets in the kit's own process (the CPU shims, the config gaps
filled); the host module registers the kit's model classes after it.

The rest turns the kit's requests (token lists, greedy decoding with top-k logprobs) into
SGLang's request objects and SGLang's answers back into the kit's `Generation`.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Sequence

from ..errors import ServiceError
from ..results import Generation, TokenLogprob
from .config_gaps import fill_config_gaps, fill_config_gaps_while_parsing
from .process import prepare_process
from .server_args import server_arg_fields
from .shims import use_cpu_native_layers, use_loopback_rendezvous

SERVING_DEVICE_ENV = "PYTEST_SGLANG_SERVING_DEVICE"  # set by the kit for the host and SGLang's children
SHARED_MEMORY_RECORD_ENV = "PYTEST_SGLANG_SHARED_MEMORY_RECORD"  # where they note the shared memory they make


def prepare_serving_process() -> None:
    """In an Engine/server host and in each process SGLang spawns from it, before SGLang builds a model."""
    device = os.environ.get(SERVING_DEVICE_ENV, "cuda")
    prepare_process(device)
    use_cpu_native_layers(device)  # for the life of the process: it builds one model (+ cpu_ops)
    use_loopback_rendezvous()  # the scheduler's dist rendezvous would listen on every interface
    _fill_config_gaps_on_load()
    _record_shared_memory()


def _record_shared_memory() -> None:
    """Note each POSIX semaphore and shared-memory segment this process makes, and SGLang's
    load-report file (``/dev/shm/sglang_loads_*``), in the kit's record: a process that is
    SIGKILLed cannot unlink them, and its resource tracker dies with its group, so the kit
    unlinks what the record names once the whole group is gone (`remove_recorded_shared_memory`)."""
    import multiprocessing.resource_tracker as tracker

    record = os.environ.get(SHARED_MEMORY_RECORD_ENV)
    if not record or getattr(tracker.register, "_kit_records", False):
        return

    def note(kind: str, name: str) -> None:
        with open(record, "a") as file:  # one short line per write: appends from many processes stay whole
            file.write(f"{kind} {name}\n")

    register = tracker.register

    def recording_register(name, rtype):
        note(rtype, name)
        return register(name, rtype)

    recording_register._kit_records = True
    tracker.register = recording_register
    try:  # SGLang releases with a load-report file (0.5.23)
        from sglang.srt.managers import load_snapshot
    except ImportError:
        return
    path_for = load_snapshot.shm_path_for

    def recording_path_for(ipc_name):
        path = path_for(ipc_name)
        note("file", path)
        return path

    load_snapshot.shm_path_for = recording_path_for


def remove_recorded_shared_memory(record: str) -> list[str]:
    """Unlink what a dead process group's record names (those still there); their names."""
    import _multiprocessing
    import _posixshmem

    unlink = {"semaphore": _multiprocessing.sem_unlink, "shared_memory": _posixshmem.shm_unlink, "file": os.unlink}
    removed = []
    try:
        with open(record) as file:
            entries = {tuple(line.split(" ", 1)) for line in file.read().splitlines() if " " in line}
    except OSError:
        return removed
    for kind, name in sorted(entries):
        try:
            unlink[kind](name)
            removed.append(name)
        except (KeyError, OSError):  # unlinked already by its owner, or a kind the kit leaves alone
            pass
    return removed


def _fill_config_gaps_on_load() -> None:
    from sglang.srt.configs.model_config import ModelConfig

    fill_config_gaps_while_parsing()

    if getattr(ModelConfig.__init__, "_kit_fills_gaps", False):
        return
    original = ModelConfig.__init__

    @functools.wraps(original)
    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        fill_config_gaps(self.hf_config)

    init._kit_fills_gaps = True
    ModelConfig.__init__ = init


def hosted_server_args(kwargs: dict) -> dict:
    """The runner's ServerArgs for a hosted Engine or server: ``sleep_on_idle`` on where this
    SGLang has it (an idle scheduler otherwise spins a core: on a 2-core CI machine, half of it)."""
    hosted = {**kwargs, "sleep_on_idle": True}
    fields = server_arg_fields()
    return {k: v for k, v in hosted.items() if k in fields}


def run_http_server(server_args) -> None:
    """SGLang's HTTP server in this process, as ``python -m sglang.launch_server`` runs it."""
    import sglang.launch_server as launcher

    try:
        from sglang.srt.plugins import load_plugins  # 0.5.23's plugin entry points
    except ImportError:
        pass
    else:
        load_plugins()
    run = getattr(launcher, "run_server", None)  # 0.5.23
    if run is None:  # 0.5.17
        from sglang.srt.entrypoints.http_server import launch_server as run
    run(server_args)


def engine_encode(engine, token_lists: Sequence[Sequence[int]]) -> list[list[float]]:
    """Embeddings of token lists (``Engine.encode`` takes texts only)."""
    from sglang.srt.managers.io_struct import EmbeddingReqInput

    request = EmbeddingReqInput(input_ids=[list(ids) for ids in token_lists])
    answer = engine.loop.run_until_complete(engine.tokenizer_manager.generate_request(request, None).__anext__())
    return [item["embedding"] for item in answer]


def greedy_sampling(
    max_new_tokens: int, stop_token_ids: Sequence[int] = (), ignore_eos: bool = False
) -> dict[str, Any]:
    """SGLang sampling parameters for the greedy decoding the runner does."""
    params: dict[str, Any] = {"temperature": 0.0, "max_new_tokens": max_new_tokens, "ignore_eos": ignore_eos}
    if stop_token_ids:
        params["stop_token_ids"] = list(stop_token_ids)
    return params


def engine_generate(
    engine, token_lists, *, max_new_tokens: int, top_logprobs: int | None, stop_token_ids=(), ignore_eos: bool = False
) -> list[dict]:
    """``Engine.generate`` for greedy decoding with prompt and output logprobs: one answer per prompt."""
    logprobs = top_logprobs is not None
    answers = engine.generate(
        input_ids=[list(ids) for ids in token_lists],
        sampling_params=greedy_sampling(max_new_tokens, stop_token_ids, ignore_eos),
        return_logprob=logprobs,
        logprob_start_len=0 if logprobs else None,
        top_logprobs_num=top_logprobs if logprobs else None,
    )
    return answers if isinstance(answers, list) else [answers]


def _finish_reason(kind: str | None) -> str | None:
    """SGLang's finish reason as the runner's: "length" (max_new_tokens), else "stop" (EOS, a stop token)."""
    return None if not kind else ("length" if kind == "length" else "stop")


def _token_logprob(entry, top) -> Any:
    logprob, token_id = entry[0], entry[1]
    ranked = {int(t[1]): float(t[0]) for t in (top or ())}
    return TokenLogprob(int(token_id), float(logprob), ranked)


def generation_from_engine(prompt_ids: Sequence[int], answer: dict):
    """One ``Engine.generate`` answer (``meta_info`` with ``(logprob, token_id, text)`` triples) as a `Generation`."""
    meta = answer["meta_info"]
    result = Generation(
        prompt_ids=list(prompt_ids), output_ids=[int(t) for t in answer["output_ids"]], text=answer.get("text")
    )
    result.finish_reason = _finish_reason((meta.get("finish_reason") or {}).get("type"))
    if "output_token_logprobs" in meta:
        prompt, prompt_top = meta.get("input_token_logprobs") or [], meta.get("input_top_logprobs") or []
        result.prompt_logprobs = [None] + [_token_logprob(entry, top) for entry, top in zip(prompt[1:], prompt_top[1:])]
        output_top = meta.get("output_top_logprobs") or [None] * len(meta["output_token_logprobs"])
        result.output_logprobs = [
            _token_logprob(entry, top) for entry, top in zip(meta["output_token_logprobs"], output_top)
        ]
        del result.output_logprobs[len(result.output_ids) :]
    return result


def completion_request(
    model: str, token_lists, max_new_tokens: int, top_logprobs: int, stop_token_ids=(), ignore_eos: bool = False
) -> dict:
    """An OpenAI ``/v1/completions`` body for greedy decoding with prompt and output top-k logprobs;
    ``return_token_ids`` (SGLang's extension) gives the token ids the text cannot."""
    body = {
        "model": model,
        "prompt": [list(ids) for ids in token_lists],
        "max_tokens": max_new_tokens,
        "temperature": 0.0,
        "logprobs": top_logprobs,
        "echo": True,
        "return_token_ids": True,
        "ignore_eos": ignore_eos,
    }
    if stop_token_ids:
        body["stop_token_ids"] = list(stop_token_ids)
    return body


def _texts_to_ids(tokenizer) -> dict[str, int]:
    """Each token's text, as ``/v1/completions`` keys its top-k, back to the token id (the lowest
    id where several tokens read the same)."""
    table: dict[str, int] = {}
    for token_id in range(len(tokenizer)):
        table.setdefault(tokenizer.decode([token_id]), token_id)
    return table


def _output_text(choice: dict, prompt_ids: Sequence[int], tokenizer) -> str:
    """The server's own text of the output: its answer's text less the prompt it echoes (SGLang
    decodes a token-list prompt with its tokenizer, special tokens skipped, and puts it first)."""
    echoed = tokenizer.decode(list(prompt_ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)
    text = choice["text"]
    if not text.startswith(echoed):
        raise ServiceError(
            f"the server's completion {text!r} does not start with the prompt it echoes ({echoed!r}, as "
            "the checkpoint's tokenizer decodes it): SGLang's tokenizer reads the prompt differently"
        )
    return text[len(echoed) :]


def generations_from_completion(token_lists, answer: dict, tokenizer) -> list:
    """A ``/v1/completions`` answer (see `completion_request`) as one `Generation` per prompt, its
    ``text`` the server's own (less the echoed prompt). Its top-k is keyed by token text: those
    become ids through the tokenizer, and tokens that read the same collapse into one entry."""
    ids_of = _texts_to_ids(tokenizer)
    results = []
    for prompt_ids, choice in zip(token_lists, sorted(answer["choices"], key=lambda c: c["index"])):
        output_ids = [int(t) for t in choice["token_ids"]]
        logprobs = choice["logprobs"]
        ids = list(prompt_ids) + output_ids
        entries = [
            None
            if value is None
            else TokenLogprob(
                token_id, float(value), {ids_of.get(text, -1): float(lp) for text, lp in (top or {}).items()}
            )
            for token_id, value, top in zip(ids, logprobs["token_logprobs"], logprobs["top_logprobs"])
        ]
        results.append(
            Generation(
                prompt_ids=list(prompt_ids),
                output_ids=output_ids,
                text=_output_text(choice, prompt_ids, tokenizer),
                prompt_logprobs=[None] + entries[1 : len(prompt_ids)],
                output_logprobs=entries[len(prompt_ids) :],
                finish_reason=_finish_reason(choice.get("finish_reason")),
            )
        )
    return results
