"""grpc's C core writes its own lines to stderr ("I1205 ... Handshake failed ..."), not JSON, which
breaks the daemons' one-JSON-event-a-line logs. It reads GRPC_VERBOSITY/GRPC_TRACE once, when grpc is
imported, so each daemon package calls `quiet_core_logs()` from its `__init__`, before anything imports
grpc. A value the operator set is kept (GRPC_VERBOSITY=ERROR, GRPC_TRACE=... to debug a transport).
What matters to an operator still arrives as an RPC status, which the daemons log as JSON.
"""
from __future__ import annotations

import os
from collections.abc import MutableMapping

DEFAULTS = {"GRPC_VERBOSITY": "NONE", "GRPC_TRACE": ""}


def quiet_core_logs(environ: MutableMapping[str, str] = os.environ) -> None:
    for name, value in DEFAULTS.items():
        environ.setdefault(name, value)
