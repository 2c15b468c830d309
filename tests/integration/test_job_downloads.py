"""`gpufleet jobs download`: a file of a job's output folder, through the coordinator from the job's
agent, on real daemons (issue 17). What the job planted (links) is refused, never followed, and a
failed download leaves the target file as it was."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpufleet.v1 import common_pb2 as pb
from gpufleet.v1 import coordinator_pb2 as cpb
from tests.harness import AgentProc, CoordinatorProc, wait_for
from tests.integration.test_cli import cli_env

# 2.5 MiB of varied bytes: several chunks, and a wrong order or a lost chunk would show in the hash.
WRITE = (
    "import os, hashlib\n"
    "out = os.environ['GPUFLEET_OUTPUT_DIR']\n"
    "data = b''.join(hashlib.sha256(str(i).encode()).digest() for i in range(81920))\n"
    "open(os.path.join(out, 'result.zip'), 'wb').write(data)\n"
    "os.makedirs(os.path.join(out, 'metrics'))\n"
    "open(os.path.join(out, 'metrics', 'val.csv'), 'w').write('epoch,acc\\n1,0.5\\n')\n"
    "open(os.path.join(out, 'empty'), 'w').close()\n"
    "os.symlink('/etc/passwd', os.path.join(out, 'leak'))\n"
    "os.symlink('metrics', os.path.join(out, 'via'))\n"
)
EXPECTED = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(81920))


def test_download_a_jobs_outputs(fleet: tuple[CoordinatorProc, AgentProc], tmp_path: Path) -> None:
    c, _ = fleet
    job = c.stub.SubmitJob(cpb.SubmitJobRequest(spec=pb.JobSpec(command=[sys.executable, "-c", WRITE],
                                                                output_dir="dl/job1"), gpus=1), timeout=10)
    wait_for(lambda: c.stub.GetJob(cpb.JobRef(job_id=job.job_id), timeout=5).status_name == "SUCCESS", 60,
             "the job that writes its outputs")
    env = cli_env(c.addr)
    work = tmp_path / "work"  # the CLI's current folder (tmp_path holds the daemons' folders)
    work.mkdir()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpufleet.cli", *args], capture_output=True, text=True,
                              timeout=60, env=env, cwd=work, stdin=subprocess.DEVNULL)

    r = cli("jobs", "download", job.job_id, "result.zip")  # default: its name, in the current folder
    assert r.returncode == 0, r.stderr
    assert (work / "result.zip").read_bytes() == EXPECTED
    r = cli("jobs", "download", job.job_id, "metrics/val.csv", "-O", "v.csv", "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"job_id": job.job_id, "path": "metrics/val.csv",
                                    "file": "v.csv", "bytes": 16}
    assert (work / "v.csv").read_text() == "epoch,acc\n1,0.5\n"
    r = cli("jobs", "download", job.job_id, "empty", "-O", "-")
    assert r.returncode == 0 and r.stdout == "", r.stderr

    keep = work / "keep"
    keep.write_text("the good copy")
    for path, code, needle in (
        ("leak", "FAILED_PRECONDITION", "symbolic link"),  # never /etc/passwd
        ("via/val.csv", "FAILED_PRECONDITION", "symbolic link"),  # a link on the way counts too
        ("nothing.pt", "NOT_FOUND", "no such file"),
        ("metrics", "FAILED_PRECONDITION", "not a regular file"),
        ("../job2/x", "INVALID_ARGUMENT", "'..'"),
    ):
        r = cli("jobs", "download", job.job_id, path, "-O", str(keep))
        assert r.returncode == 1 and f"error ({code})" in r.stderr and needle in r.stderr, (path, r.stderr)
        assert "Traceback" not in r.stderr and "root:" not in r.stdout
        assert keep.read_text() == "the good copy", path
    assert sorted(p.name for p in work.iterdir()) == ["keep", "result.zip", "v.csv"]  # no .part left behind


@pytest.mark.parametrize("job_id, needle", [("nope", "NOT_FOUND"), ("", "job_id")])
def test_download_of_an_unknown_job_is_refused(fleet: tuple[CoordinatorProc, AgentProc], job_id: str,
                                               needle: str) -> None:
    c, _ = fleet
    r = subprocess.run([sys.executable, "-m", "gpufleet.cli", "jobs", "download", job_id, "result.zip", "-O", "-"],
                       capture_output=True, text=True, timeout=60, env=cli_env(c.addr), stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr
