"""Dataset staging: hardlinks under <data-root>/tmp/<stage_id>, refusals that leave the disk unchanged."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from gpufleet.agent.staging import StageLinkSpec, stage_dataset

from gpufleet.errors import FailedPrecondition, InvalidArgument


def mk(root: Path, rel: str, content: str = "x") -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path


def tree(root: Path) -> list[str]:
    """Every path under root, without following links: a snapshot to prove nothing changed."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(out)


def make_zip(path: Path, entries: dict[str, str], symlinks: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    mk(data, "ds/a/1.png", "compare a1")
    mk(data, "ds/a/1_t.png", "target a1")
    mk(data, "ds/a/1_label.png", "label a1")
    mk(data, "ds/a/1.geojson", '{"type": "FeatureCollection"}')
    mk(data, "ds/a/2.png", "compare a2")
    mk(data, "ds/b/1.png", "compare b1")
    mk(tmp_path, "outside.png", "secret")
    return data


def test_happy_path_links_every_part(root: Path) -> None:
    links = [
        StageLinkSpec("train", input1="ds/a/1.png", input2="ds/a/1_t.png", label="ds/a/1_label.png",
                      label_json="ds/a/1.geojson"),
        StageLinkSpec("train", input1="ds/a/2.png"),
        StageLinkSpec("val", input1="ds/b/1.png"),
        StageLinkSpec("test", label="./ds/a/1_label.png"),
    ]
    result = stage_dataset(root, "stage-1", links)
    stage = root.resolve() / "tmp" / "stage-1"
    assert result.stage_dir == stage
    assert (result.made, result.skipped, result.extracted, result.warnings) == (7, 0, 0, [])
    assert result.counts == {"train/input1": 2, "train/input2": 1, "train/label": 1, "train/label-json": 1,
                             "val/input1": 1, "test/label": 1}
    assert tree(stage) == sorted([
        "test", "test/label", "test/label/1_label.png",
        "train", "train/input1", "train/input1/1.png", "train/input1/2.png", "train/input2",
        "train/input2/1_t.png", "train/label", "train/label/1_label.png", "train/label-json",
        "train/label-json/1.geojson", "val", "val/input1", "val/input1/1.png",
    ])
    staged = stage / "train/label-json/1.geojson"
    assert staged.read_text() == '{"type": "FeatureCollection"}'
    assert os.path.samefile(staged, root / "ds/a/1.geojson")  # a hardlink, not a copy
    assert (root / "ds/a/1.geojson").stat().st_nlink == 2


def test_collision_without_dataset_id_replaces(root: Path) -> None:
    stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/a/1.png")])
    result = stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/b/1.png")])
    staged = root / "tmp/s/train/input1/1.png"
    assert (result.made, result.skipped) == (1, 0)
    assert staged.read_text() == "compare b1"
    assert tree(root / "tmp/s/train/input1") == ["1.png"]  # no temp file left behind
    assert (root / "ds/a/1.png").stat().st_nlink == 1  # the old link is gone


def test_collision_within_one_request_warns(root: Path) -> None:
    result = stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/a/1.png"),
                                       StageLinkSpec("train", input1="ds/b/1.png")])
    assert (root / "tmp/s/train/input1/1.png").read_text() == "compare b1"
    assert result.made == 2
    assert result.warnings == [
        "links[1].input1: replaced the file links[0].input1 staged at train/input1/1.png"]


def test_collision_with_dataset_id_prefixes_names(root: Path) -> None:
    links = [StageLinkSpec("train", dataset_id="A", input1="ds/a/1.png"),
             StageLinkSpec("train", dataset_id="B.v2", input1="ds/b/1.png")]
    result = stage_dataset(root, "s", links)
    folder = root / "tmp/s/train/input1"
    assert result.made == 2 and result.warnings == []
    assert tree(folder) == ["A__1.png", "B.v2__1.png"]
    assert (folder / "A__1.png").read_text() == "compare a1"
    assert (folder / "B.v2__1.png").read_text() == "compare b1"


@pytest.mark.parametrize("dataset_id", ["", "A"])
def test_repeated_request_skips_identical_links_and_succeeds(root: Path, dataset_id: str) -> None:
    links = [StageLinkSpec("train", dataset_id=dataset_id, input1="ds/a/1.png", label="ds/a/1_label.png")]
    stage_dataset(root, "s", links)
    result = stage_dataset(root, "s", links)
    assert (result.made, result.skipped) == (0, 2)
    assert result.counts == {"train/input1": 1, "train/label": 1}  # what the folder holds
    assert result.warnings == ["2 file(s) were already staged (same file); left as they were"]
    assert len(tree(root / "tmp/s/train/input1")) == 1


def test_missing_source_is_skipped_with_a_warning(root: Path) -> None:
    result = stage_dataset(root, "s", [StageLinkSpec("val", input1="ds/a/1.png", label="ds/a/nope.png")])
    assert (result.made, result.skipped) == (1, 1)
    assert result.warnings == ["links[0].label: source 'ds/a/nope.png' does not exist; skipped"]
    assert result.counts == {"val/input1": 1}
    assert not (root / "tmp/s/val/label").exists()


def test_zero_made_is_an_error_that_says_why(root: Path) -> None:
    with pytest.raises(FailedPrecondition) as err:
        stage_dataset(root, "s", [StageLinkSpec("val", input1="gone/1.png"),
                                  StageLinkSpec("val", label="x.png")])
    assert str(err.value) == (
        "StageDataset: no file was staged: links[0].input1: source 'gone/1.png' does not exist; skipped; "
        "links[1].label: source 'x.png' does not exist; skipped")
    assert not (root / "tmp").exists()


@pytest.mark.parametrize(
    ("rel", "rule"),
    [
        ("../outside.png", "must not contain '..'"),
        ("ds/../../outside.png", "must not contain '..'"),
        ("/etc/passwd", "must be relative"),
        ("~/x.png", "must be relative"),
        ("ds/a\x00.png", "NUL"),
        ("link_out.png", "resolves outside its root"),
        ("dirlink/outside.png", "resolves outside its root"),
        ("link_in.png", "is a symlink"),
        ("ds/a", "must be a regular file"),
        ("fifo", "must be a regular file"),
        ("ds/a/1.png/x", "is not a directory"),
        ("tmp/old/1.png", "tmp/"),
        (".", "must not be the data root"),
    ],
)
def test_bad_source_paths_are_refused_and_change_nothing(root: Path, rel: str, rule: str) -> None:
    os.symlink(root.parent / "outside.png", root / "link_out.png")
    os.symlink(root.parent, root / "dirlink")
    os.symlink(root / "ds/a/1.png", root / "link_in.png")
    os.mkfifo(root / "fifo")
    mk(root, "tmp/old/1.png")
    before = tree(root)
    # links[0] is fine: the bad links[1] must stop the whole request before anything is made.
    links = [StageLinkSpec("train", input1="ds/a/1.png"),
             StageLinkSpec("train", input1="ds/a/2.png", input2=rel)]
    with pytest.raises(InvalidArgument) as err:
        stage_dataset(root, "s", links)
    assert err.value.field == "links[1].input2"
    assert rule in err.value.rule
    assert tree(root) == before


@pytest.mark.parametrize("stage_id", ["", ".", "..", "a/b", "-x", "_x", "a b", "x" * 129, "ok\n", "é"])
def test_bad_stage_id(root: Path, stage_id: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        stage_dataset(root, stage_id, [StageLinkSpec("train", input1="ds/a/1.png")])
    assert err.value.field == "stage_id"
    assert not (root / "tmp").exists()


@pytest.mark.parametrize(
    ("link", "field"),
    [
        (StageLinkSpec("training", input1="ds/a/1.png"), "links[1].split"),
        (StageLinkSpec("", input1="ds/a/1.png"), "links[1].split"),
        (StageLinkSpec("TRAIN", input1="ds/a/1.png"), "links[1].split"),
        (StageLinkSpec("val"), "links[1]"),
        (StageLinkSpec("val", dataset_id="../x", input1="ds/a/1.png"), "links[1].dataset_id"),
        (StageLinkSpec("val", dataset_id="a__b/c", input1="ds/a/1.png"), "links[1].dataset_id"),
    ],
)
def test_bad_links(root: Path, link: StageLinkSpec, field: str) -> None:
    with pytest.raises(InvalidArgument) as err:
        stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/a/2.png"), link])
    assert err.value.field == field
    assert not (root / "tmp").exists()


@pytest.mark.parametrize(
    ("links", "max_links"), [([], 10), ([StageLinkSpec("train", input1="ds/a/1.png")] * 3, 2)])
def test_link_count_limits(root: Path, links: list[StageLinkSpec], max_links: int) -> None:
    with pytest.raises(InvalidArgument) as err:
        stage_dataset(root, "s", links, max_links=max_links)
    assert err.value.field == "links"


def test_zip_is_extracted_into_a_folder_named_after_it(root: Path) -> None:
    make_zip(root / "ds/tiles.zip", {"a.png": "A", "sub/": "", "sub/b.png": "B", "./c.png": "C"})
    result = stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/tiles.zip"),
                                       StageLinkSpec("val", dataset_id="D", label="ds/tiles.zip")])
    assert (result.made, result.extracted) == (0, 2)
    assert result.counts == {"train/input1": 3, "val/label": 3}
    assert tree(root / "tmp/s/train/input1") == ["tiles", "tiles/a.png", "tiles/c.png", "tiles/sub",
                                                  "tiles/sub/b.png"]
    assert (root / "tmp/s/train/input1/tiles/sub/b.png").read_text() == "B"
    assert (root / "tmp/s/val/label/D__tiles/a.png").read_text() == "A"


def test_zip_extraction_replaces_files_of_a_previous_run(root: Path) -> None:
    make_zip(root / "ds/tiles.zip", {"a.png": "old"})
    stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/tiles.zip")])
    make_zip(root / "ds/tiles.zip", {"a.png": "new"})
    result = stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/tiles.zip")])
    assert result.extracted == 1
    assert tree(root / "tmp/s/train/input1/tiles") == ["a.png"]
    assert (root / "tmp/s/train/input1/tiles/a.png").read_text() == "new"


@pytest.mark.parametrize("entry", ["../evil.txt", "/abs_evil.txt", "a/../../evil.txt", "..\\evil.txt",
                                   "C:/evil.txt", "\\evil.txt"])
def test_zip_slip_is_refused_and_nothing_is_created(root: Path, entry: str) -> None:
    make_zip(root / "ds/bad.zip", {"fine.png": "ok", entry: "pwned"})
    before = tree(root)
    links = [StageLinkSpec("train", input1="ds/a/1.png"), StageLinkSpec("train", input2="ds/bad.zip")]
    with pytest.raises(InvalidArgument) as err:
        stage_dataset(root, "s", links)
    assert err.value.field == "links[1].input2"
    assert "'ds/bad.zip'" in err.value.rule and repr(entry) in err.value.rule and "escapes" in err.value.rule
    assert tree(root) == before


def test_zip_symlink_entry_is_refused_and_nothing_is_created(root: Path) -> None:
    make_zip(root / "ds/bad.zip", {"fine.png": "ok"}, symlinks={"passwd": "/etc/passwd"})
    before = tree(root)
    with pytest.raises(InvalidArgument) as err:
        stage_dataset(root, "s", [StageLinkSpec("test", label="ds/bad.zip")])
    assert err.value.rule == "zip 'ds/bad.zip': entry 'passwd' is a symlink"
    assert tree(root) == before


def test_not_a_zip_is_refused(root: Path) -> None:
    mk(root, "ds/fake.zip", "not a zip at all")
    with pytest.raises(InvalidArgument) as err:
        stage_dataset(root, "s", [StageLinkSpec("test", label="ds/fake.zip")])
    assert err.value.field == "links[0].label" and "not a readable zip" in err.value.rule
    assert not (root / "tmp").exists()


def test_planted_symlink_inside_the_stage_dir_is_not_followed(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "tmp/s/train").mkdir(parents=True)
    os.symlink(elsewhere, root / "tmp/s/train/input1")
    with pytest.raises(FailedPrecondition, match="refusing to write through a link"):
        stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/a/1.png")])
    assert list(elsewhere.iterdir()) == []


# --- hardlinks cannot cross file systems -------------------------------------------------------------


def _mount_tmpfs(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode(errors='replace').strip()}")


@pytest.fixture(params=["source-on-a-mounted-fs", "tmp-is-a-mount", "tmp-links-to-dev-shm"])
def split_fs(request: pytest.FixtureRequest, root: Path) -> Iterator[tuple[Path, str]]:
    """A data root where the source and <data-root>/tmp live on different file systems."""
    layout = request.param
    cleanup: list[Path] = []
    if layout == "source-on-a-mounted-fs":  # e.g. a NAS mounted inside the data root
        _mount_tmpfs(root / "nas")
        cleanup.append(root / "nas")
        mk(root, "nas/1.png", "on nas")
        rel = "nas/1.png"
    elif layout == "tmp-is-a-mount":
        _mount_tmpfs(root / "tmp")
        cleanup.append(root / "tmp")
        rel = "ds/a/1.png"
    else:  # needs no privileges: /dev/shm is a tmpfs on any Linux
        shm = Path("/dev/shm") / f"gpufleet-test-{uuid.uuid4().hex}"
        try:
            shm.mkdir()
        except OSError as exc:
            pytest.skip(f"no /dev/shm: {exc}")
        os.symlink(shm, root / "tmp")
        rel = "ds/a/1.png"
        if shm.stat().st_dev == root.stat().st_dev:
            shutil.rmtree(shm)
            pytest.skip("/dev/shm is on the same file system as the test folder")
    try:
        yield root, rel
    finally:
        for mount in cleanup:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)
        if layout == "tmp-links-to-dev-shm":
            shutil.rmtree(root.joinpath("tmp").resolve(), ignore_errors=True)


def test_cross_device_is_refused_before_anything_is_made(split_fs: tuple[Path, str]) -> None:
    root, rel = split_fs
    before = tree(root.joinpath("tmp").resolve()) if root.joinpath("tmp").exists() else []
    with pytest.raises(FailedPrecondition) as err:
        stage_dataset(root, "s", [StageLinkSpec("train", input1=rel)])
    message = str(err.value)
    assert "hardlinks cannot cross file systems" in message
    assert str(root.resolve() / rel) in message  # the source
    assert str(root.resolve() / "tmp/s/train/input1") in message  # the destination
    after = tree(root.joinpath("tmp").resolve()) if root.joinpath("tmp").exists() else []
    assert after == before


def test_zip_on_another_file_system_is_extracted(split_fs: tuple[Path, str]) -> None:
    # Extraction copies, so a zip needs no shared file system.
    root, _ = split_fs
    make_zip(root / "ds/tiles.zip", {"a.png": "A"})
    result = stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/tiles.zip")])
    assert result.extracted == 1
    assert (root / "tmp/s/train/input1/tiles/a.png").read_text() == "A"


def test_a_restage_with_more_files_counts_everything_the_folder_holds(root: Path) -> None:
    """Was: counts were the files made by this call only, so the coordinator's DatasetCounts (which
    stores the latest answer per split/part) dropped to 1 after a restage that added one file."""
    first = stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/a/1.png")])
    assert first.counts == {"train/input1": 1}
    more = stage_dataset(root, "s", [StageLinkSpec("train", input1="ds/a/1.png"),
                                     StageLinkSpec("train", input1="ds/a/2.png"),
                                     StageLinkSpec("val", label="ds/a/1_label.png")])
    assert more.made == 2  # what this call added...
    assert more.counts == {"train/input1": 2, "val/label": 1}  # ...and what the stage now holds
    assert len(tree(root / "tmp/s/train/input1")) == 2
