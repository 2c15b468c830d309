"""The CLI's config file: named contexts (coordinator address and credentials), one of them current.

    current_context = "prod"
    [contexts.prod]
    coordinator = "coord.example:50050"
    tls_ca = "/home/alice/fleet/ca.crt"
    tls_cert = "/home/alice/fleet/alice.crt"
    tls_key = "/home/alice/fleet/alice.key"
    token_file = "/home/alice/fleet/token"      # or token = "gft_..."

Where: $GPUFLEET_CLI_CONFIG, else $XDG_CONFIG_HOME/gpufleet/config.toml, else
~/.config/gpufleet/config.toml. Written with mode 0600 (it may hold a token). Flags and
GPUFLEET_* variables override what a context says.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gpufleet.errors import InvalidArgument

KEYS = ("coordinator", "tls_ca", "tls_cert", "tls_key", "token_file", "token")


@dataclass
class Context:
    coordinator: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    token_file: str = ""
    token: str = ""


@dataclass
class Config:
    current_context: str = ""
    contexts: dict[str, Context] = field(default_factory=dict)

    def context(self, name: str = "") -> Context | None:
        """The named context, else the current one; None when there is none."""
        name = name or self.current_context
        if name and name not in self.contexts:
            raise InvalidArgument("--context", f"no context {name!r} in the config "
                                               f"(have: {', '.join(sorted(self.contexts)) or 'none'})")
        return self.contexts.get(name) if name else None


def path() -> Path:
    if os.environ.get("GPUFLEET_CLI_CONFIG"):
        return Path(os.environ["GPUFLEET_CLI_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "gpufleet" / "config.toml"


def load(p: Path | None = None) -> Config:
    """The config file, or an empty config when there is none."""
    p = p or path()
    try:
        doc = tomllib.loads(p.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return Config()
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise InvalidArgument("config", f"cannot read {p}: {exc}") from None
    contexts = {}
    for name, ctx in (doc.get("contexts") or {}).items():
        if not isinstance(ctx, dict):
            raise InvalidArgument("config", f"{p}: contexts.{name} must be a table")
        unknown = set(ctx) - set(KEYS)
        if unknown:
            raise InvalidArgument("config", f"{p}: contexts.{name}: unknown key(s) {', '.join(sorted(unknown))}; "
                                            f"known: {', '.join(KEYS)}")
        contexts[name] = Context(**{k: str(v) for k, v in ctx.items()})
    return Config(current_context=str(doc.get("current_context", "")), contexts=contexts)


def _q(s: str) -> str:
    return json.dumps(s)  # a JSON string with ASCII escapes is a valid TOML basic string


def dumps(cfg: Config) -> str:
    lines = [f"current_context = {_q(cfg.current_context)}"]
    for name in sorted(cfg.contexts):
        lines += ["", f"[contexts.{_q(name)}]"]
        lines += [f"{k} = {_q(v)}" for k, v in asdict(cfg.contexts[name]).items() if v]
    return "\n".join(lines) + "\n"


def save(cfg: Config, p: Path | None = None) -> Path:
    """Write atomically with mode 0600 (the folder 0700 when made here)."""
    p = p or path()
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = p.with_name(p.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(dumps(cfg))
    os.chmod(tmp, 0o600)
    os.replace(tmp, p)
    return p
