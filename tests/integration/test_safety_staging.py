"""Issue 13, finding 7: a folder swapped for a symlink after staging validated it stages nothing from outside.

A real agent pauses between validation and placing (failpoint `agent.stage.after_plan=wait=GATE`);
the test swaps a source folder for a symlink to a folder outside the data root in that window, then
lets it go on. The agent opens the validated path again without following links and hardlinks the
opened descriptor, so the swapped source is skipped with a warning and the secret never appears in
the stage folder.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpufleet.v1 import agent_pb2 as apb
from tests.harness import AgentProc, wait_for


def test_a_folder_swapped_for_a_symlink_after_validation_stages_nothing_from_outside(
        agent_factory: Callable[..., AgentProc], tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    a = agent_factory(env={"GPUFLEET_FAILPOINTS": f"agent.stage.after_plan=wait={gate}"})
    (a.data_root / "ds" / "a").mkdir(parents=True)
    (a.data_root / "ds" / "a" / "1.png").write_text("public")
    (a.data_root / "ds" / "b").mkdir()
    (a.data_root / "ds" / "b" / "2.png").write_text("fine")
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "1.png"
    secret.write_text("root-only secret")
    secret.chmod(0o600)

    got: dict[str, Any] = {}

    def stage() -> None:
        try:
            got["r"] = a.stub.StageDataset(apb.StageDatasetRequest(stage_id="s1", links=[
                apb.StageLink(split="train", input1="ds/a/1.png"),
                apb.StageLink(split="train", input2="ds/b/2.png")]), timeout=90)
        except Exception as exc:  # noqa: BLE001 - reported below
            got["err"] = exc

    t = threading.Thread(target=stage)
    t.start()
    wait_for(lambda: Path(f"{gate}.reached").exists(), 60, "the agent paused after validating the links")
    os.rename(a.data_root / "ds" / "a", a.data_root / "ds" / "a.moved")
    os.symlink(outside, a.data_root / "ds" / "a")  # ds/a/1.png now leads to the secret
    gate.touch()
    t.join(90)
    assert "err" not in got, got.get("err")
    r = got["r"]
    assert (r.made, r.skipped) == (1, 1)
    assert any("links[0].input1: source 'ds/a/1.png' changed since it was checked" in w for w in r.warnings), r.warnings
    stage_dir = a.data_root / "tmp" / "s1" / "train"
    assert not (stage_dir / "input1" / "1.png").exists()
    assert (stage_dir / "input2" / "2.png").read_text() == "fine"
    assert secret.stat().st_nlink == 1  # no second name for the secret anywhere
    staged = [p.read_text() for p in (a.data_root / "tmp").rglob("*") if p.is_file()]
    assert "root-only secret" not in staged
