"""Daemon settings from flags, environment (`GPUFLEET_<NAME>`) and a TOML file, in that order of
precedence. One declaration per option, so the three sources can never disagree on names.
"""
from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from gpufleet.errors import InvalidArgument


@dataclass(frozen=True)
class Option:
    name: str  # flag --name, env GPUFLEET_NAME (dashes -> underscores), TOML key name or name_with_underscores
    default: Any
    help: str
    type: type = str
    flag_only: bool = False


def _env_name(name: str) -> str:
    return "GPUFLEET_" + name.upper().replace("-", "_")


def _coerce(opt: Option, value: Any, source: str) -> Any:
    if opt.type is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise InvalidArgument(opt.name, f"{source}: expected true/false, got {value!r}")
    try:
        return opt.type(value)
    except (TypeError, ValueError):
        raise InvalidArgument(opt.name, f"{source}: expected {opt.type.__name__}, got {value!r}") from None


def parse(prog: str, description: str, options: Sequence[Option], argv: Sequence[str] | None = None,
          env: dict[str, str] | None = None, epilog: str = "") -> argparse.Namespace:
    """`epilog`: shown after the options as written (a daemon's subcommands, one a line)."""
    env = dict(os.environ) if env is None else env
    ap = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog or None,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="TOML config file (env GPUFLEET_CONFIG)", default=env.get("GPUFLEET_CONFIG"))
    for opt in options:
        flag = "--" + opt.name
        env_note = "" if opt.flag_only else f" [env {_env_name(opt.name)}]"
        if opt.type is bool:
            ap.add_argument(flag, action="store_true", default=None, help=opt.help + env_note)
        else:
            # One default in the help: none when it is empty or the text already names it.
            shown = "" if opt.default in ("", None) or "default:" in opt.help else f" (default: {opt.default})"
            ap.add_argument(flag, default=None, help=f"{opt.help}{shown}{env_note}")
    ns = ap.parse_args(argv)
    file_values: dict[str, Any] = {}
    if ns.config:
        try:
            with open(ns.config, "rb") as f:
                file_values = tomllib.load(f)
        except OSError as exc:
            ap.error(f"--config: cannot read {ns.config}: {exc.strerror}")
        except tomllib.TOMLDecodeError as exc:
            ap.error(f"--config: {ns.config} is not valid TOML: {exc}")
        known = {o.name for o in options} | {o.name.replace("-", "_") for o in options}
        unknown = sorted(set(file_values) - known)
        if unknown:
            ap.error(f"--config: unknown settings in {ns.config}: {', '.join(unknown)}")
    out = argparse.Namespace(config=ns.config)
    try:
        for opt in options:
            attr = opt.name.replace("-", "_")
            value = getattr(ns, attr)
            if value is not None:
                setattr(out, attr, _coerce(opt, value, "--" + opt.name))
                continue
            if not opt.flag_only and _env_name(opt.name) in env:
                setattr(out, attr, _coerce(opt, env[_env_name(opt.name)], _env_name(opt.name)))
                continue
            for key in (opt.name, attr):
                if key in file_values:
                    setattr(out, attr, _coerce(opt, file_values[key], f"{ns.config}:{key}"))
                    break
            else:
                setattr(out, attr, opt.default)
    except InvalidArgument as exc:
        ap.error(str(exc))
    return out


T = TypeVar("T")


def typed(cls: type[T], options: Sequence[Option], ns: argparse.Namespace) -> T:
    """The parsed settings as the daemon's config dataclass: one field per option (dashes become
    underscores), so a misspelt or forgotten option fails here, at start-up, not deep in a daemon."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    missing = sorted(o.name.replace("-", "_") for o in options if o.name.replace("-", "_") not in names)
    if missing:
        raise TypeError(f"{cls.__name__} has no field for the options {', '.join(missing)}")
    return cls(**{o.name.replace("-", "_"): getattr(ns, o.name.replace("-", "_")) for o in options})


def split_hostport(value: str, field: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdecimal()) or not 0 <= int(port) <= 65535:
        raise InvalidArgument(field, f"expected HOST:PORT, got {value!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """Judged on the parsed address ("127.evil.example" is a name, not loopback)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def state_path(value: str) -> Path:
    return Path(value).expanduser().resolve()
