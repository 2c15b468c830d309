"""Dataset staging: hardlink a request's sample files into <data-root>/tmp/<stage_id>/<split>/<part>/.

Invariants:
- Nothing outside the data root is read and nothing outside <data-root>/tmp/<stage_id> is written.
- All input is validated before anything is created: a bad request leaves the disk unchanged.
- Only os.link / os.replace / zipfile touch files; never a shell (the old system's `ln` calls
  broke on names with spaces and could be made to run anything).
- Placing a file is atomic (link to a temp name, then os.replace), so a reader never sees a
  half-replaced destination and a crash leaves either the old or the new file.
- Sources are opened, not trusted: validation resolves each path once; placing and extracting open
  that resolved path again below the data root without following any link (gpufleet.safefs) and
  hardlink or read the opened descriptor. A folder swapped for a symlink after validation (issue 13)
  makes the open fail and the file is skipped with a warning; nothing from outside is staged.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import secrets
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from gpufleet import failpoints, safefs
from gpufleet.errors import FailedPrecondition, InvalidArgument
from gpufleet.paths import relative_under

SPLITS = ("train", "val", "test")
PARTS = ("input1", "input2", "label", "label_json")  # compare image, target image, label, geojson
# The folder on disk is the old system's name (a trainer written for it opens label-json/); the API
# field stays label_json. LEGACY_FOLDERS are renamed to the current name on the next stage of a uid.
FOLDERS = {"input1": "input1", "input2": "input2", "label": "label", "label_json": "label-json"}
LEGACY_FOLDERS = {"label_json": "label-json"}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", re.ASCII)
_DRIVE = re.compile(r"[A-Za-z]:")
_SAFE_ZIP_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA})
_MAX_WARNINGS = 100


@dataclass
class StageLinkSpec:
    split: str
    dataset_id: str = ""
    input1: str = ""
    input2: str = ""
    label: str = ""
    label_json: str = ""


@dataclass
class StageResult:
    stage_dir: Path
    made: int
    skipped: int
    extracted: int
    counts: dict[str, int]
    warnings: list[str]


@dataclass
class _Item:
    """One validated source and where it goes."""

    where: str  # e.g. "links[3].input1", for messages
    rel: str  # as the caller wrote it
    src: Path  # resolved, a regular file under the data root
    part_dir: Path
    dest_name: str  # file name, or folder name for a zip
    key: str  # "split/part"
    beneath: str = ""  # src relative to the data root: links inside the root already resolved
    zip_entries: list[zipfile.ZipInfo] = field(default_factory=list)
    is_zip: bool = False


def stage_dataset(data_root: Path, stage_id: str, links: list[StageLinkSpec],
                  max_links: int = 100_000) -> StageResult:
    root = data_root.resolve()
    if not _ID.fullmatch(stage_id):
        raise InvalidArgument("stage_id", f"must match {_ID.pattern}, got {stage_id!r}")
    if not links:
        raise InvalidArgument("links", "must name at least one link")
    if len(links) > max_links:
        raise InvalidArgument("links", f"at most {max_links} links per request, got {len(links)}")
    if not root.is_dir():
        raise FailedPrecondition(f"StageDataset: the data root {root} is not a directory")
    tmp = root / "tmp"
    stage_dir = tmp / stage_id

    items, missing = _plan(root, tmp, stage_dir, links)
    failpoints.hit("agent.stage.after_plan")
    legacy = _rename_legacy(stage_dir)
    _check_devices(items)
    _check_zip_space(items)

    made = skipped = extracted = already = 0
    warnings = [f"{f}: source {rel!r} does not exist; skipped" for f, rel in missing] + legacy
    skipped += len(missing)
    placed: dict[Path, str] = {}  # destination -> field that put it there in this request
    expected_tmp = tmp.resolve()
    for item in items:
        _make_dir(item.part_dir, expected_tmp / stage_id / item.key)
        dest = item.part_dir / item.dest_name
        if item.is_zip:
            _extract(root, item, dest)
            extracted += 1
            continue
        earlier = placed.get(dest)
        result = _place(root, item, dest)
        if result == "missing":  # vanished since validation
            warnings.append(f"{item.where}: source {item.rel!r} does not exist; skipped")
            skipped += 1
        elif result == "changed":
            warnings.append(f"{item.where}: source {item.rel!r} changed since it was checked (a link or a "
                            "non-file now stands in its path); skipped")
            skipped += 1
        elif result == "same":
            already += 1
            skipped += 1
        else:
            made += 1
            if earlier is not None:
                warnings.append(f"{item.where}: replaced the file {earlier} staged at "
                                f"{item.key}/{item.dest_name}")
        placed[dest] = item.where

    if made == 0 and extracted == 0 and already == 0:
        # A repeated request whose files are all in place is a success, not "nothing staged".
        reasons = "; ".join(warnings[:10]) or "no link named a file"
        raise FailedPrecondition(f"StageDataset: no file was staged: {reasons}")
    if already:
        warnings.append(f"{already} file(s) were already staged (same file); left as they were")
    if len(warnings) > _MAX_WARNINGS:
        warnings = warnings[:_MAX_WARNINGS] + [f"... and {len(warnings) - _MAX_WARNINGS} more"]
    # What the stage folder holds now, not what this call added: a restage with extra files, or a
    # repeat, must not make the coordinator's record smaller than the dataset on disk.
    return StageResult(stage_dir, made, skipped, extracted, staged_counts(stage_dir), warnings)


def staged_counts(stage_dir: Path) -> dict[str, int]:
    """Files per "split/part" under the stage folder (zip contents included; temp files not)."""
    counts: dict[str, int] = {}
    for split in SPLITS:
        for part in PARTS:
            folder = stage_dir / split / FOLDERS[part]
            if folder.is_symlink() or not folder.is_dir():
                continue
            n = 0
            for _dirpath, dirs, files in os.walk(folder):  # never follows links
                dirs[:] = [d for d in dirs if not _is_temp(d)]  # a zip being extracted, or an old one going
                n += sum(1 for f in files if not _is_temp(f))
            if n:
                counts[f"{split}/{FOLDERS[part]}"] = n
    return counts


def _is_temp(name: str) -> bool:
    return name.startswith(".gpufleet-") and name.endswith(".tmp")


def _rename_legacy(stage_dir: Path) -> list[str]:
    """Rename folders an earlier gpufleet created (label_json) to the current name (label-json)."""
    notes: list[str] = []
    for split in SPLITS:
        for old, new in LEGACY_FOLDERS.items():
            src, dst = stage_dir / split / old, stage_dir / split / new
            if src.is_symlink() or not src.is_dir():
                continue
            if os.path.lexists(dst):
                notes.append(f"{split}/{old}: left as it was; {split}/{new} exists too (the current name)")
                continue
            os.rename(src, dst)
            notes.append(f"{split}/{old}: renamed to {split}/{new} (the folder name trainers read)")
    return notes


def _plan(root: Path, tmp: Path, stage_dir: Path,
          links: list[StageLinkSpec]) -> tuple[list[_Item], list[tuple[str, str]]]:
    """Validate every link; return what to place and the (field, path) of missing sources."""
    tmp_resolved = tmp.resolve()
    items: list[_Item] = []
    missing: list[tuple[str, str]] = []
    for i, link in enumerate(links):
        where = f"links[{i}]"
        if link.split not in SPLITS:
            raise InvalidArgument(f"{where}.split", f"must be one of train, val, test, got {link.split!r}")
        if link.dataset_id and not _ID.fullmatch(link.dataset_id):
            raise InvalidArgument(f"{where}.dataset_id",
                                  f"must match {_ID.pattern}, got {link.dataset_id!r}")
        parts = [(p, getattr(link, p)) for p in PARTS if getattr(link, p)]
        if not parts:
            raise InvalidArgument(where, "names no file: set input1, input2, label or label_json")
        for part, rel in parts:
            name = f"{where}.{part}"
            src = relative_under(root, rel, name)
            if src == tmp_resolved or tmp_resolved in src.parents or src == root:
                raise InvalidArgument(name, f"must not be the data root or under its tmp/ folder ({rel!r})")
            try:
                # lstat of the path as written: a symlink as the last component is refused even
                # when it points inside the root (a link to a link would stage the wrong file).
                st = os.lstat(root / rel)
            except FileNotFoundError:
                missing.append((name, rel))
                continue
            except NotADirectoryError as exc:
                raise InvalidArgument(name, f"a parent of {rel!r} is not a directory") from exc
            except OSError as exc:  # e.g. ENAMETOOLONG
                raise InvalidArgument(name, f"cannot be read: {exc.strerror} ({rel[:80]!r})") from None
            if stat.S_ISLNK(st.st_mode):
                raise InvalidArgument(name, f"must be a regular file, {rel!r} is a symlink")
            if not stat.S_ISREG(st.st_mode):
                raise InvalidArgument(name, f"must be a regular file, {rel!r} is not")
            base = src.name
            is_zip = base.lower().endswith(".zip")
            if is_zip:
                base = base[: -len(".zip")] or "zip"
            dest_name = f"{link.dataset_id}__{base}" if link.dataset_id else base
            if len(os.fsencode(dest_name)) > 255:
                raise InvalidArgument(name, f"destination name {dest_name!r} is longer than 255 bytes")
            folder = FOLDERS[part]
            item = _Item(name, rel, src, stage_dir / link.split / folder, dest_name, f"{link.split}/{folder}",
                         beneath=str(src.relative_to(root)), is_zip=is_zip)
            if is_zip:
                item.zip_entries = _zip_entries(root, item)
            items.append(item)
    return items, missing


def _open_source(root: Path, item: _Item) -> int:
    """A descriptor of the validated source, opened below the root without following any link."""
    return safefs.open_regular(root, item.beneath)


def _zip_entries(root: Path, item: _Item) -> list[zipfile.ZipInfo]:
    """Every entry of the zip, refusing any that could write outside its folder or is not data."""
    try:
        with os.fdopen(_open_source(root, item), "rb") as f, zipfile.ZipFile(f) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InvalidArgument(item.where, f"{item.rel!r} is not a readable zip file ({exc})") from exc
    seen: dict[tuple[str, ...], bool] = {}  # normalised path -> is a folder
    for info in infos:
        entry = info.filename
        parts = re.split(r"[/\\]", entry)
        # zipfile would itself strip "../" and leading "/", but silently; refuse so the user knows
        # the archive is hostile or broken instead of getting a surprising layout.
        if entry.startswith(("/", "\\")) or _DRIVE.match(entry) or ".." in parts or "\x00" in entry:
            raise InvalidArgument(item.where, f"zip {item.rel!r}: entry {entry!r} escapes its folder")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidArgument(item.where, f"zip {item.rel!r}: entry {entry!r} is a symlink")
        if info.flag_bits & 0x1:
            raise InvalidArgument(item.where, f"zip {item.rel!r}: entry {entry!r} is encrypted")
        if info.compress_type not in _SAFE_ZIP_METHODS:
            raise InvalidArgument(item.where, f"zip {item.rel!r}: entry {entry!r} uses an unsupported "
                                              f"compression method ({info.compress_type})")
        norm = tuple(p for p in parts if p not in ("", "."))
        if not norm:
            continue
        is_dir = info.is_dir()
        clash = seen.get(norm)
        if clash is not None and not (clash and is_dir):
            raise InvalidArgument(item.where, f"zip {item.rel!r}: entry {entry!r} clashes with an earlier "
                                              f"entry of the same path")
        for k in range(1, len(norm)):
            if seen.get(norm[:k]) is False:
                raise InvalidArgument(item.where, f"zip {item.rel!r}: entry {entry!r} lies under "
                                                  f"{'/'.join(norm[:k])!r}, which is a file in the zip")
            seen.setdefault(norm[:k], True)
        seen[norm] = is_dir
    return infos


def _existing_ancestor(path: Path) -> Path:
    while not os.path.lexists(path):
        path = path.parent
    return path


def _check_devices(items: list[_Item]) -> None:
    """Hardlinks cannot cross file systems; say so before creating anything."""
    devices: dict[Path, int] = {}
    for item in items:
        if item.is_zip:
            continue  # extracted by copying: any file system will do
        anchor = _existing_ancestor(item.part_dir)
        if anchor not in devices:
            devices[anchor] = os.stat(anchor).st_dev
        if os.stat(item.src).st_dev != devices[anchor]:
            raise FailedPrecondition(
                f"StageDataset: {item.where}: source {item.src} and destination {item.part_dir} are on "
                f"different file systems; hardlinks cannot cross file systems (put <data-root>/tmp on "
                f"the same file system as the data)")


def _check_zip_space(items: list[_Item]) -> None:
    need: dict[Path, int] = {}
    for item in items:
        if item.is_zip:
            anchor = _existing_ancestor(item.part_dir)
            need[anchor] = need.get(anchor, 0) + sum(i.file_size for i in item.zip_entries)
            free = shutil.disk_usage(anchor).free
            if need[anchor] > free:
                raise FailedPrecondition(f"StageDataset: {item.where}: extracting {item.rel!r} needs "
                                         f"{need[anchor]} bytes, {anchor} has {free} free")


def _make_dir(path: Path, expected: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    # A symlink planted inside tmp/ must not redirect our writes elsewhere.
    if path.resolve() != expected:
        raise FailedPrecondition(f"StageDataset: {path} resolves to {path.resolve()}; refusing to write "
                                 f"through a link")


def _temp_name(folder: Path) -> Path:
    return folder / f".gpufleet-{secrets.token_hex(8)}.tmp"


def _place(root: Path, item: _Item, dest: Path) -> str:
    """Hardlink item's source at dest: "made", "same" (already that file), "missing" or "changed"."""
    try:
        fd = _open_source(root, item)
    except FileNotFoundError:
        return "missing"
    except OSError:  # ELOOP/EXDEV (a link in the path now), EINVAL (not a regular file), ENOTDIR
        return "changed"
    try:
        return _place_fd(fd, item, dest)
    finally:
        os.close(fd)


def _place_fd(fd: int, item: _Item, dest: Path) -> str:
    src_st = os.fstat(fd)
    try:
        if os.path.samestat(src_st, os.lstat(dest)):
            # Also required for correctness: rename() of two links to one inode is a no-op
            # that would leave the temp name behind.
            return "same"
    except FileNotFoundError:
        pass
    temp = _temp_name(item.part_dir)
    try:
        # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N links the opened file itself, whatever its
        # path has become since (AT_EMPTY_PATH would need CAP_DAC_READ_SEARCH). Python calls
        # linkat, not link (which would link the magic link), only when given a directory fd.
        dirfd = os.open(item.part_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.link(f"/proc/self/fd/{fd}", temp.name, dst_dir_fd=dirfd, follow_symlinks=True)
        finally:
            os.close(dirfd)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        if exc.errno == errno.EXDEV:  # the file systems changed since the check
            raise FailedPrecondition(
                f"StageDataset: {item.where}: cannot hardlink {item.src} to {dest}: hardlinks cannot "
                f"cross file systems") from exc
        raise
    try:
        os.replace(temp, dest)
    except OSError as exc:
        _unlink_quietly(temp)
        raise FailedPrecondition(f"StageDataset: {item.where}: cannot place {item.src} at {dest}: "
                                 f"{exc.strerror}") from exc
    return "made"


def _extract(root: Path, item: _Item, folder: Path) -> int:
    """Replace folder as a whole with the zip's validated entries; return the number of files written.

    The entries go into a temporary sibling first; only a complete extraction is swapped in
    (renameat2 RENAME_EXCHANGE where the kernel has it, else two renames), so a running job sees
    the old folder or the new one, never a half-extracted one, and no file the zip no longer has.
    """
    if os.path.lexists(folder) and (folder.is_symlink() or not folder.is_dir()):
        raise FailedPrecondition(f"StageDataset: {item.where}: {folder} exists and is not a folder")
    temp = _temp_name(folder.parent)
    temp.mkdir()
    expected = temp.resolve()
    files = 0
    try:
        try:
            source = os.fdopen(_open_source(root, item), "rb")
        except OSError as exc:
            raise FailedPrecondition(f"StageDataset: {item.where}: {item.rel!r} changed since it was checked "
                                     f"({exc.strerror}); nothing extracted from it") from None
        with source, zipfile.ZipFile(source) as zf:
            for info in item.zip_entries:
                rel = PurePosixPath(info.filename.replace("\\", "/"))
                parts = [p for p in rel.parts if p not in ("", ".")]
                if not parts:
                    continue
                target = temp.joinpath(*parts)
                if info.is_dir():
                    _make_dir(target, expected.joinpath(*parts))
                    continue
                _make_dir(target.parent, expected.joinpath(*parts[:-1]))
                try:
                    with zf.open(info) as src, open(target, "xb") as dst:
                        shutil.copyfileobj(src, dst, 1024 * 1024)
                except (zipfile.BadZipFile, EOFError) as exc:
                    raise InvalidArgument(item.where, f"zip {item.rel!r}: entry {info.filename!r} is corrupt "
                                                      f"({exc})") from exc
                files += 1
        if os.path.lexists(folder):
            _swap(temp, folder)  # temp now holds the old contents
            shutil.rmtree(temp, ignore_errors=True)
        else:
            os.rename(temp, folder)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return files


_RENAME_EXCHANGE = 2
_renameat2: Any = None


def _swap(a: Path, b: Path) -> None:
    """Exchange two folders atomically; fall back to b -> spare, a -> b, spare -> a."""
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fn = libc.renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (AttributeError, OSError):
            _renameat2 = False
    if _renameat2:
        at_fdcwd = -100
        if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, os.strerror(err), str(b))
    spare = _temp_name(b.parent)
    os.rename(b, spare)
    try:
        os.rename(a, b)
    except BaseException:
        os.rename(spare, b)
        raise
    os.rename(spare, a)


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
