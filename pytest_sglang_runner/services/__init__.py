"""SGLang's own ``sglang.Engine`` and HTTP server, one fixture away (``sglang_engine``,
``sglang_server``), configured by the same options as the runner.

- `process`: the host process (its own session, a log file, its start's phases), stopped with its whole tree;
- `engine` / `engine_host`: the test's handle on an Engine, and the process that hosts it;
- `server` / `server_host`: the test's handle on a server (base URL, HTTP client), and its process;
- `factory`: at most one of each per pytest process, per config, started again after a death;
  a record of each start and stop for the terminal summary.

Both run in processes of their own because an Engine changes process-global state (signal
handlers, the start method, the event loop policy) and its ``shutdown()`` kills every child of
the calling process: inside pytest that would be xdist's and the kit's TP peers.

May import: the leaf modules, the version adapter, the settings and process helpers, the models
and the runner (a service is configured like a runner: `runner.plan`). Never the plugin or MeZO.
"""

from ..errors import ServiceError, ServiceRestarted
from .engine import EngineService
from .factory import ServiceFactory
from .server import ServerService

__all__ = ["EngineService", "ServerService", "ServiceError", "ServiceFactory", "ServiceRestarted"]
