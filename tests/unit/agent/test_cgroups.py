"""agent/cgroups.py's pure parts and the limits it writes (a plain folder stands in for cgroupfs,
where every controller's files would exist; the real hierarchy is in test_safety_cgroups.py)."""
from __future__ import annotations

from pathlib import Path

from gpufleet.agent.cgroups import JobCgroups, _cgroup2_mount, _own_cgroup

MOUNTINFO = (
    "25 30 0:23 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory\n"
    "26 30 0:24 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate\n"
)


def test_the_cgroup2_mount_and_the_agents_own_cgroup_are_read_from_proc() -> None:
    assert _cgroup2_mount(MOUNTINFO) == Path("/sys/fs/cgroup/unified")
    assert _cgroup2_mount(MOUNTINFO.splitlines()[0]) is None  # cgroup v1 only: no per-job cgroups
    assert _own_cgroup("4:memory:/x\n0::/system.slice/gpufleet-agent.service\n") == \
        "/system.slice/gpufleet-agent.service"
    assert _own_cgroup("4:memory:/x\n") is None


def test_a_jobs_limits_are_its_specs(tmp_path: Path) -> None:
    cg = JobCgroups(tmp_path)
    d = cg.make("j1", 2, cpu_millis=1500, memory_bytes=2 << 30)
    assert d == tmp_path / "j1-2"
    assert (d / "cpu.max").read_text() == "150000 100000"  # 1.5 CPUs per 100 ms period
    assert (d / "memory.max").read_text() == str(2 << 30)
    assert (d / "memory.swap.max").read_text() == "0"
    none = cg.make("j2", 1, cpu_millis=0, memory_bytes=0)
    assert sorted(p.name for p in none.iterdir()) == []  # no limit asked: none written
    assert cg.wrapper_env("j1", 2) == {"GPUFLEET_CGROUP": str(d), "GPUFLEET_CGROUP_PARK": str(tmp_path / "wrappers")}
