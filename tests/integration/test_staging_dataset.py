"""Issue 18: a model whose dataset was staged gets it with no extra flags, in both runtimes.

The coordinator sets JobSpec.dataset to the model's uuid once StageDataset has counted files for it;
the agent hands <data-root>/tmp/<uuid> to the job: GPUFLEET_DATASET_DIR (process), and a read-only
mount at /dataset named by the same variable (docker).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gpufleet.v1 import agent_pb2 as apb
from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import AgentProc, wait_for

PY = sys.executable
READER = (
    "import os, pathlib\n"
    "d = pathlib.Path(os.environ['GPUFLEET_DATASET_DIR'])\n"
    "names = sorted(p.name for p in (d / 'train' / 'label-json').iterdir())\n"
    "pathlib.Path(os.environ['GPUFLEET_OUTPUT_DIR'], 'seen').write_text(','.join(names))\n"
)


def _data(root: Path) -> None:
    (root / "ds").mkdir(parents=True, exist_ok=True)
    (root / "ds" / "1.geojson").write_text("{}")
    (root / "ds" / "1.png").write_text("png")


def test_a_models_job_sees_its_staged_dataset_process_runtime(fleet) -> None:  # type: ignore[no-untyped-def]
    c, a = fleet
    _data(a.data_root)
    m = c.stub.CreateModel(cpb.CreateModelRequest(model_no="DS1", params_json='{"total_epoch": 1}',
                                                  spec=pb.JobSpec(command=[PY, "-c", READER])), timeout=10)
    r = c.stub.StageDataset(cpb.CoordinatorStageRequest(
        uuid=m.uuid, links=[apb.StageLink(split="train", label_json="ds/1.geojson", input1="ds/1.png")]),
        timeout=60)
    assert dict(r.counts) == {"train/input1": 1, "train/label-json": 1}
    counts = c.stub.DatasetCounts(cpb.ModelRef(uuid=m.uuid), timeout=10)
    assert counts.counts["train/label-json"] == 1
    c.stub.RunTrain(cpb.ModelRef(uuid=m.uuid), timeout=10)
    models = a.output_root / "models" / m.uuid
    seen = wait_for(lambda: next((p for p in models.glob("*/seen")), None) if models.is_dir() else None,
                    60, "the job's report of its dataset")
    assert seen.read_text() == "1.geojson"


def test_a_job_without_a_staged_dataset_gets_no_variable(agent_factory) -> None:  # type: ignore[no-untyped-def]
    a: AgentProc = agent_factory("a")
    script = "import os; open('env', 'w').write(os.environ.get('GPUFLEET_DATASET_DIR', 'unset'))"
    a.launch("nods", [PY, "-c", script], dataset="never-staged")
    a.wait_state("nods", "SUCCEEDED")
    assert (a.output_root / "nods" / "env").read_text() == "unset"


@pytest.mark.docker
def test_a_staged_dataset_is_mounted_read_only_docker(docker_agent: AgentProc) -> None:
    a = docker_agent
    _data(a.data_root)
    a.stub.StageDataset(apb.StageDatasetRequest(stage_id="u1", links=[
        apb.StageLink(split="train", label_json="ds/1.geojson")]), timeout=60)
    script = ('ls "$GPUFLEET_DATASET_DIR/train/label-json" > /output/seen; '
              'if touch "$GPUFLEET_DATASET_DIR/w" 2>/dev/null; then echo rw; else echo ro; fi >> /output/seen; '
              'echo "$GPUFLEET_DATASET_DIR" >> /output/seen')
    a.launch("d-ds", ["/bin/sh", "-c", script], image="gpufleet-tiny:latest", dataset="u1")
    a.wait_state("d-ds", "SUCCEEDED", timeout=60)
    assert (a.output_root / "d-ds" / "seen").read_text().split() == ["1.geojson", "ro", "/dataset"]
