"""Seed fidelity (issue 18): the old system's folder names, and a re-staged zip that replaces its folder whole."""
from __future__ import annotations

import os
import threading
import time
import zipfile
from pathlib import Path

import pytest
from gpufleet.agent.staging import StageLinkSpec, stage_dataset

from gpufleet.errors import InvalidArgument


def mk(root: Path, rel: str, content: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def make_zip(path: Path, entries: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    mk(data, "ds/1.geojson", "{}")
    mk(data, "ds/1.png", "png")
    return data


def test_geojson_labels_land_in_label_hyphen_json(root: Path) -> None:
    r = stage_dataset(root, "u1", [StageLinkSpec(split="train", label_json="ds/1.geojson", input1="ds/1.png")])
    assert (r.stage_dir / "train" / "label-json" / "1.geojson").read_text() == "{}"
    assert not (r.stage_dir / "train" / "label_json").exists()
    assert r.counts == {"train/input1": 1, "train/label-json": 1}


def test_a_folder_from_an_earlier_version_is_renamed_on_the_next_stage(root: Path) -> None:
    old = mk(root, "tmp/u1/val/label_json/old.geojson", "old")
    r = stage_dataset(root, "u1", [StageLinkSpec(split="train", input1="ds/1.png")])
    assert not old.parent.exists()
    assert (r.stage_dir / "val" / "label-json" / "old.geojson").read_text() == "old"
    assert r.counts["val/label-json"] == 1
    assert any("renamed" in w for w in r.warnings)


def test_a_restaged_zip_leaves_no_stale_file(root: Path) -> None:
    z = make_zip(root / "ds" / "imgs.zip", [("a.png", "1"), ("sub/b.png", "2")])
    link = StageLinkSpec(split="train", input1="ds/imgs.zip")
    r = stage_dataset(root, "u1", [link])
    folder = r.stage_dir / "train" / "input1" / "imgs"
    assert sorted(p.name for p in folder.rglob("*")) == ["a.png", "b.png", "sub"]
    make_zip(z, [("a.png", "new")])
    r = stage_dataset(root, "u1", [link])
    assert sorted(p.name for p in folder.rglob("*")) == ["a.png"]
    assert (folder / "a.png").read_text() == "new"
    assert sorted(os.listdir(folder.parent)) == ["imgs"]  # no temp folder left behind
    assert r.counts == {"train/input1": 1}


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("entries", [
    [("a.png", "1"), ("a.png", "2")],
    [("a.png", "1"), ("./a.png", "2")],
    [("a", "file"), ("a/b.png", "2")],
    [("a/b.png", "1"), ("a", "file")],
])
def test_clashing_zip_entries_are_refused_and_nothing_is_extracted(root: Path,
                                                                   entries: list[tuple[str, str]]) -> None:
    make_zip(root / "ds" / "bad.zip", entries)
    with pytest.raises(InvalidArgument, match="clashes|lies under"):
        stage_dataset(root, "u1", [StageLinkSpec(split="train", input1="ds/bad.zip")])
    assert not (root / "tmp" / "u1").exists()


def test_a_concurrent_reader_never_sees_a_half_extracted_folder(root: Path) -> None:
    n = 60
    versions = [[(f"f{i:03}.png", str(v)) for i in range(n)] for v in range(2)]
    z = make_zip(root / "ds" / "imgs.zip", versions[0])
    link = StageLinkSpec(split="train", input1="ds/imgs.zip")
    r = stage_dataset(root, "u1", [link])
    folder = r.stage_dir / "train" / "input1" / "imgs"
    stop = threading.Event()
    seen: list[tuple[int, set[str]]] = []

    def reader() -> None:
        while not stop.is_set():
            try:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)  # pins one version of the folder
            except FileNotFoundError:
                continue  # between two renames of the fallback: absent, never partial
            try:
                names = os.listdir(fd)
                contents = set()
                for name in names:
                    f = os.open(name, os.O_RDONLY, dir_fd=fd)
                    with os.fdopen(f) as fh:
                        contents.add(fh.read())
                still_current = os.stat(folder).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                continue  # the old version was being deleted after the swap: it had been complete
            finally:
                os.close(fd)
            if still_current:  # a swapped-out version is being deleted; the live one is never touched
                seen.append((len(names), contents))

    t = threading.Thread(target=reader)
    t.start()
    try:
        # At least 6 swaps, and on until the reader had its turns (a loaded machine may starve it).
        deadline = time.monotonic() + 120
        v = 0
        while v < 6 or (len(seen) < 10 and time.monotonic() < deadline):
            make_zip(z, versions[(v + 1) % 2])
            stage_dataset(root, "u1", [link])
            v += 1
    finally:
        stop.set()
        t.join(timeout=60)
    assert seen
    for count, contents in seen:
        assert count == n

        assert len(contents) == 1  # every file from the same version
