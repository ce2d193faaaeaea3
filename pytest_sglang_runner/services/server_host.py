"""The process that runs SGLang's HTTP server for the kit: ``python -m`` this module with the
ServerArgs as JSON in argv.

It is SGLang's own server (``python -m sglang.launch_server``), with one difference: at import,
here and in the scheduler and detokenizer SGLang spawns from here (they import this module as
``__mp_main__``), the process gets the kit's CPU shims and model classes, as in `engine_host`.
"""

from __future__ import annotations

import json
import sys

from ..models import register_kit_models
from ..sglang_compat import serving
from ..sglang_compat.server_args import make_server_args
from .process import report_phase, watch_lifeline

serving.prepare_serving_process()
register_kit_models()

if __name__ == "__main__":
    watch_lifeline()
    report_phase(
        "starting the server: its scheduler and detokenizer import SGLang, load the model, allocate the KV cache"
    )
    serving.run_http_server(make_server_args(**serving.hosted_server_args(json.loads(sys.argv[1]))))
