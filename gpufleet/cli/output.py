"""What the CLI prints: tables for people, typed JSON for scripts.

The JSON contract (`-o json`, documented in the README):
- field names as in the proto (snake_case); every field present, zeros and empty strings included
  (GPU 0 has `"index": 0`); a field that is only set sometimes (`exit_code`) is absent when unset;
- numbers are JSON numbers, int64 included (protobuf's own JSON writes int64 as strings);
- enums by name, timestamps as RFC 3339 strings;
- a command that lists answers `{"items": [...]}` plus its paging fields, whatever the RPC calls the list.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from gpufleet.cli.settings import CTX

out = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, soft_wrap=True)  # one line per message: greppable, never cut mid-word

INT64_TYPES = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
               FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
WELL_KNOWN = "google.protobuf."


def _typed(value: Any, field: FieldDescriptor) -> Any:
    if field.type in INT64_TYPES:
        return int(value)
    if field.type == FieldDescriptor.TYPE_MESSAGE and not field.message_type.full_name.startswith(WELL_KNOWN):
        return _fix(value, field.message_type)
    return value


def _fix(d: Any, desc: Descriptor) -> Any:
    """Walk MessageToDict's output beside the message's descriptor: int64 strings become numbers."""
    if not isinstance(d, dict):
        return d
    for key, value in d.items():
        field = desc.fields_by_name.get(key)
        if field is None:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            vfield = field.message_type.fields_by_name["value"]
            d[key] = {k: _typed(v, vfield) for k, v in value.items()}
        elif field.is_repeated:
            d[key] = [_typed(v, field) for v in value]
        else:
            d[key] = _typed(value, field)
    return d


def as_dict(msg: Message) -> dict[str, Any]:
    """A message as the typed JSON object the CLI prints."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    return _fix(d, msg.DESCRIPTOR)  # type: ignore[no-any-return]


def print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True), flush=True)


def listing(items: list[Message], **extra: Any) -> dict[str, Any]:
    """The one shape of every list: {"items": [...], ...paging}."""
    return {"items": [as_dict(m) for m in items], **extra}


def emit(msg: Message, table: Callable[[], None]) -> None:
    if CTX.output == "json":
        print_json(as_dict(msg))
    else:
        table()


def emit_doc(doc: dict[str, Any], table: Callable[[], None]) -> None:
    if CTX.output == "json":
        print_json(doc)
    else:
        table()


def wide() -> bool:
    return CTX.output == "wide"


def _table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    if wide():  # long lines, never wrapped cells (as kubectl's -o wide)
        natural = Console(width=100_000).measure(t).maximum
        Console(width=max(natural, out.width), highlight=False).print(t)
    else:
        out.print(t)


def watch(show: Callable[[], None], every: float) -> None:
    """`--watch`: show, then again every `every` seconds until Ctrl-C (exit 0). A table redraws the
    screen on a terminal; JSON prints one document after another (as `kubectl get -w`)."""
    try:
        while True:
            if CTX.output != "json" and out.is_terminal:
                out.clear()
            show()
            time.sleep(every)  # the refresh period the user asked for, not synchronisation
    except KeyboardInterrupt:
        return
