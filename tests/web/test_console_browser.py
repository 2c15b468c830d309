"""The console in headless Debian Chromium (Playwright, no browser download): run a model from the page,
watch the badge and the chart, test at the best epoch, and a viewer sees no buttons."""
from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from gpufleet.coordinator import tokens
from gpufleet.coordinator.db import engine as dbengine
from playwright.sync_api import Page, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Artifacts go to the test's temp folder; GPUFLEET_SCREENSHOTS=docs regenerates the README's pictures.
SHOTS_ENV = "GPUFLEET_SCREENSHOTS"
TRAINER = [sys.executable, "-m", "gpufleet.trainer"]


@pytest.fixture
def browser() -> Any:
    # setup-dev.sh installs chromium: its absence is a broken CI machine, so fail, never skip.
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run scripts/setup-dev.sh"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def viewer_token(state: Path) -> str:
    eng = dbengine.make_engine(dbengine.default_sqlite_url(state))
    try:
        return tokens.create_token(eng, "web-viewer", "viewer")
    finally:
        eng.dispose()


def test_run_and_test_a_model_from_the_page(fleet: Any, serve: Callable[..., str], browser: Any,
                                            tmp_path: Path) -> None:
    shots = Path(os.environ.get(SHOTS_ENV) or tmp_path)
    c, _ = fleet
    base = serve(c.addr)
    m = httpx.post(f"{base}/api/models", timeout=10, json={
        "model_no": "G1", "version": "v1", "params_json": json.dumps({"total_epoch": 4, "epoch_seconds": 0.3}),
        "spec": {"command": TRAINER, "total_epoch": 4}, "gpus": 1}).json()
    page: Page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(base + "/#/models")
    row = page.locator(f"tr[data-uuid='{m['uuid']}']")
    expect(row.locator(".status .badge")).to_have_text("READY", timeout=30_000)
    page.screenshot(path=str(shots / "console-models.png"))
    row.locator("button[data-act='run']").click()
    expect(row.locator(".status .badge")).to_have_text("IN_PROGRESS", timeout=30_000)
    page.goto(f"{base}/#/model/{m['uuid']}")
    expect(page.locator("h2 .status .badge")).to_have_text("COMPLETED", timeout=60_000)
    expect(page.locator("svg.chart").first).to_have_attribute("data-points", "4", timeout=30_000)  # a point per epoch
    page.locator("button[data-act='test']").click()
    expect(page.locator(".step2 .badge")).to_have_text(re.compile("IN_PROGRESS|COMPLETED"), timeout=30_000)
    expect(page.locator("#msg")).to_have_text("")
    page.screenshot(path=str(shots / "console-model.png"), full_page=True)
    page.goto(base + "/#/nodes")
    expect(page.locator("main table tr")).to_have_count(5, timeout=30_000)  # header and 4 GPUs
    page.screenshot(path=str(shots / "console-nodes.png"), full_page=True)


def test_a_viewer_sees_no_buttons(coordinator_factory: Callable[..., Any], serve: Callable[..., str],
                                  browser: Any) -> None:
    c = coordinator_factory(start=False, extra=["--auth", "on"])
    eng = dbengine.make_engine(dbengine.default_sqlite_url(c.root / "state"))
    dbengine.migrate(eng)
    admin = tokens.create_token(eng, "web-admin", "admin")
    eng.dispose()
    token = viewer_token(c.root / "state")
    c.start()
    base = serve(c.addr)
    httpx.post(f"{base}/api/models", timeout=10, headers={"Authorization": f"Bearer {admin}"},
               json={"model_no": "G1", "spec": {"command": ["true"]}, "gpus": 1}).raise_for_status()
    page: Page = browser.new_page()
    page.goto(base + "/")
    page.fill("#token", token)
    page.click("#signin button")
    expect(page.locator("#who")).to_have_text("viewer", timeout=30_000)
    expect(page.locator("td .badge").first).to_have_text("READY", timeout=30_000)
    assert page.locator("main button").count() == 0 and page.locator("#create").count() == 0


def test_jobs_page_shows_why_a_job_waits_and_a_pipelines_steps(fleet: Any, serve: Callable[..., str],
                                                                browser: Any) -> None:
    """Issue 16: pending reasons and a pipeline's state and steps reach the console, not only the CLI."""
    from gpufleet.v1 import common_pb2 as pb
    from gpufleet.v1 import coordinator_pb2 as cpb

    c, _ = fleet
    base = serve(c.addr)

    def req(command: list[str], out: str, gpus: int = 1, **kw: Any) -> Any:
        return cpb.SubmitJobRequest(spec=pb.JobSpec(command=command, output_dir=out), gpus=gpus, **kw)

    big = c.stub.SubmitJob(req(["true"], "console/big", gpus=64, wait_for_capacity=True), timeout=10)
    p = c.stub.SubmitPipeline(cpb.SubmitPipelineRequest(name="train-eval", steps=[
        cpb.PipelineStep(name="prepare", job=req([sys.executable, "-c", "pass"], "console/prepare")),
        cpb.PipelineStep(name="evaluate", job=req([sys.executable, "-c", "import sys; sys.exit(3)"],
                                                  "console/evaluate"), after=["prepare"]),
        cpb.PipelineStep(name="report", job=req([sys.executable, "-c", "pass"], "console/report"),
                         after=["evaluate"])]), timeout=10)
    page: Page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(base + "/#/jobs")
    waiting = page.locator(f"tr[data-job='{big.job_id}']")
    expect(waiting.locator(".status .badge")).to_have_text("QUEUED", timeout=30_000)
    expect(waiting.locator(".why .pending")).to_have_attribute("data-code", "NO_NODE_FITS", timeout=30_000)
    expect(waiting.locator(".why")).to_contain_text("largest node has 4")
    page.locator(f"a[href='#/pipeline/{p.pipeline_id}']").first.click()
    expect(page.locator("h2 .status .badge")).to_have_text("FAILED", timeout=60_000)
    for name, status in (("prepare", "SUCCESS"), ("evaluate", "FAILED"), ("report", "CANCELED")):
        expect(page.locator(f"tr[data-step='{name}'] .status .badge")).to_have_text(status, timeout=30_000)
    expect(page.locator("tr[data-step='report'] .why")).to_contain_text("DEPENDENCY: dependency")
    expect(page.locator("tr[data-step='report'] td").nth(1)).to_have_text("evaluate")
