"""Fuzz every HTTP endpoint from the served OpenAPI document against a real coordinator: never a 5xx."""
from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from gpufleet.web.api import create_app


def test_no_server_errors(coordinator_factory: Any) -> None:
    c = coordinator_factory()
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", create_app(c.addr))
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 12  # every endpoint is in the document
    for op in ops:

        @given(case=op.as_strategy())
        @settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error])

        check()
