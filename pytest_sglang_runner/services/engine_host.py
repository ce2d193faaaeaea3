"""The process that hosts an ``sglang.Engine`` for the kit: ``python -m`` this module.

Started by `EngineService` with one end of a socket pair (its fd number in argv), it builds the
Engine from the kwargs it is sent, then answers requests until told to close or until the pytest
side goes away. Why a process of its own: an Engine replaces the SIGQUIT and SIGTERM handlers,
forces the ``spawn`` start method, sets uvloop's event loop policy and environment
variables, and its ``shutdown()`` kills every child of the calling process. Here those children
are the Engine's alone.

At import (here and in the scheduler and detokenizer SGLang spawns from here, which import this
module as ``__mp_main__``) the process gets the kit's CPU shims and model classes.
"""

from __future__ import annotations

import sys
import traceback
from multiprocessing.connection import Connection

from ..models import register_kit_models
from ..sglang_compat import serving
from .process import report_phase, watch_lifeline

serving.prepare_serving_process()
register_kit_models()


def _answer(engine, command: str, payload: dict):
    if command == "encode":
        return serving.engine_encode(engine, payload["token_lists"])
    if command == "generate":
        return serving.engine_generate(engine, payload.pop("token_lists"), **payload)
    if command == "call":  # any other Engine method, e.g. get_server_info
        return getattr(engine, payload["method"])(*payload["args"], **payload["kwargs"])
    raise ValueError(f"unknown engine request {command!r}")


def serve(conn: Connection) -> None:
    import sglang

    kwargs = serving.hosted_server_args(conn.recv())
    report_phase(
        "building the Engine: its scheduler and detokenizer import SGLang, load the model, allocate the KV cache"
    )
    try:
        engine = sglang.Engine(**kwargs)
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        raise SystemExit(1) from None
    conn.send(("ready", None))
    try:
        while True:
            try:
                command, payload = conn.recv()
            except EOFError:  # pytest went away: stop the Engine with it
                break
            if command == "close":
                break
            try:
                conn.send(("ok", _answer(engine, command, payload)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        engine.shutdown()  # kills the scheduler and detokenizer (this process's only children)
    try:
        conn.send(("closed", None))
    except OSError:
        pass


if __name__ == "__main__":
    watch_lifeline()
    serve(Connection(int(sys.argv[1])))
