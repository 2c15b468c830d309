"""A real web process (uvicorn in a thread) in front of a real coordinator, with or without tokens."""
from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn

from gpufleet.web.api import create_app
from tests.harness import free_port, wait_for


@pytest.fixture
def serve() -> Iterator[Callable[..., str]]:
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(coordinator: str, **kw: Any) -> str:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(coordinator, **kw), host="127.0.0.1", port=port,
                                               log_level="warning"))
        t = threading.Thread(target=server.run, daemon=True)
        t.start()
        servers.append((server, t))
        wait_for(lambda: server.started or None, 30, "web server started")
        return f"http://127.0.0.1:{port}"

    yield start
    for server, t in servers:
        server.should_exit = True
        t.join(30)
