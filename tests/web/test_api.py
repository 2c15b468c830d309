"""The HTTP API against a real coordinator and agent: paging, the action matrix as HTTP statuses, nodes."""
from __future__ import annotations

import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gpufleet.web.api import create_app
from tests.harness import wait_for

TRAINER = [sys.executable, "-m", "gpufleet.trainer"]


@pytest.fixture
def api(fleet: Any) -> tuple[TestClient, Any]:
    c, a = fleet
    return TestClient(create_app(c.addr)), a


def new_model(client: TestClient, model_no: str = "G1", epochs: int = 3) -> dict[str, Any]:
    r = client.post("/api/models", json={
        "model_no": model_no, "version": "v1", "params_json": f'{{"total_epoch": {epochs}, "epoch_seconds": 0.05}}',
        "spec": {"command": TRAINER, "total_epoch": epochs}, "gpus": 1})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def test_models_page_like_the_old_list_api(api: tuple[TestClient, Any]) -> None:
    client, _ = api
    for n in range(3):
        new_model(client, f"G{n}")
    body = client.get("/api/models", params={"size": 2}).json()
    assert body["totalElements"] == 3 and body["totalPages"] == 2 and len(body["content"]) == 2
    assert len(client.get("/api/models", params={"size": 2, "page": 1}).json()["content"]) == 1
    only = client.get("/api/models", params={"model_no": "G1"}).json()
    assert [m["model_no"] for m in only["content"]] == ["G1"]
    assert client.get("/api/models", params={"status": "ready"}).json()["totalElements"] == 3
    assert client.get("/api/models", params={"status": "completed"}).json()["totalElements"] == 0


def test_refusals_have_fitting_statuses_and_the_servers_message(api: tuple[TestClient, Any]) -> None:
    client, _ = api
    m = new_model(client)
    r = client.post(f"/api/models/{m['uuid']}/resume")  # READY cannot resume
    assert r.status_code == 409 and r.json()["message"] and "Traceback" not in r.text
    assert client.get("/api/models/00000000-0000-4000-8000-000000000000").status_code == 404
    assert client.get("/api/models/not-a-uuid").status_code == 422
    assert client.get("/api/models", params={"status": "bogus"}).status_code == 422
    assert client.post("/api/models", json={"model_no": ""}).status_code == 422
    assert client.post("/api/models", json={"no_such_field": 1}).status_code == 422
    assert client.post(f"/api/models/{m['uuid']}/explode").status_code == 404
    assert client.get("/api/jobs/nope").status_code == 404


def test_train_then_test_at_best_epoch_over_http(api: tuple[TestClient, Any]) -> None:
    client, agent = api
    m = new_model(client)
    r = client.post(f"/api/models/{m['uuid']}/run")
    assert r.status_code == 200 and r.json()["status_name"] == "IN_PROGRESS"
    job_id = r.json()["current_attempt_id"]

    def done() -> dict[str, Any] | None:
        x = client.get(f"/api/models/{m['uuid']}").json()
        return x if x.get("step1_state_name") == "COMPLETED" else None

    m = wait_for(done, 60, "training to complete over HTTP")
    assert m["status_name"] == "COMPLETED" and int(m["best_epoch"]) >= 1
    job = client.get(f"/api/jobs/{job_id}").json()
    assert job["status_name"] == "SUCCESS" and job["node"] == agent.node_name
    rows = client.get(f"/api/jobs/{job_id}/metrics").json()["rows"]
    assert {r["split"] for r in rows} >= {"train", "val"}
    log = client.get(f"/api/jobs/{job_id}/logs")
    assert log.status_code == 200 and log.text
    assert client.get("/api/jobs/0123456789abcdef/logs").status_code in (404, 422)
    jobs = client.get("/api/jobs", params={"model": m["uuid"]}).json()
    assert jobs["totalElements"] == 1 and jobs["content"][0]["job_id"] == job_id
    r = client.post(f"/api/models/{m['uuid']}/test", params={"epoch": m["best_epoch"]})
    assert r.status_code == 200 and r.json()["step2_state_name"] == "IN_PROGRESS"
    assert client.post(f"/api/models/{m['uuid']}/test", params={"epoch": -1}).status_code == 422


def test_nodes_list_and_drain(api: tuple[TestClient, Any]) -> None:
    client, agent = api
    nodes = client.get("/api/nodes").json()["nodes"]
    assert [n["name"] for n in nodes] == [agent.node_name] and len(nodes[0]["gpus"]) == 4
    r = client.post(f"/api/nodes/{agent.node_name}/drain")
    assert r.status_code == 200 and r.json()["state_name"] == "DRAINING" or "DRAIN" in str(r.json().get("state"))
    assert client.post(f"/api/nodes/{agent.node_name}/undrain").status_code == 200
    assert client.post("/api/nodes/ghost/drain").status_code == 404


def test_whoami_without_tokens_is_admin_and_the_console_is_served(api: tuple[TestClient, Any]) -> None:
    client, _ = api
    assert client.get("/api/whoami").json() == {"role": "admin"}  # a coordinator without tokens allows all
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "EventSource" in client.get("/static/app.js").text
    assert "/api/models" in client.get("/api/openapi.json").json()["paths"]
