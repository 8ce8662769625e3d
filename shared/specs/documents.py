"""Reading a spec document from a file, safely: bounded size, depth and alias expansion, strict keys.

Why each limit (each was a hang, a traceback or a silent surprise):
- only regular files: a FIFO blocks forever and `/dev/zero` never ends;
- `MAX_BYTES`: the Kubernetes API server refuses request bodies over 3 MiB anyway;
- UTF-8 only, decoded with a clear error (the API server and kubectl read UTF-8 YAML/JSON);
- `MAX_DEPTH`: 5,000 nested levels exhaust Python's stack in the parser and in every walk after it;
- `MAX_NODES`, counted with aliases expanded: a 1 KB "billion laughs" document otherwise expands to
  gigabytes when the spec is copied, substituted or written as JSON (go-yaml refuses excessive
  aliasing for the same reason);
- duplicate mapping keys are refused, as kubectl's strict decoding does: PyYAML keeps the last one;
- `MAX_STRING` and NUL bytes: a command or value the kernel refuses (E2BIG, "embedded null byte")
  must fail here, naming the field, not at start on the machine that runs it.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Mapping
from typing import Any

import yaml

from shared.errors import SpecError

MAX_BYTES = 3 * 1024 * 1024
MAX_DEPTH = 100
MAX_NODES = 200_000
MAX_STRING = 128 * 1024 - 1  # Linux's MAX_ARG_STRLEN, with the terminating NUL


def read_text(path: str, what: str = "the spec file") -> str:
    """The file's text: a regular file of at most MAX_BYTES, UTF-8 (a UTF-8 BOM is allowed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not block
    except OSError as exc:
        raise SpecError(path, f"cannot read {what}: {exc.strerror or exc}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise SpecError(path, f"{what} must be a regular file, not a {_file_type(info.st_mode)}")
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise SpecError(path, f"{what} is larger than {MAX_BYTES // (1024 * 1024)} MiB")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SpecError(path, f"{what} must be UTF-8 text, got UTF-16 (save it as UTF-8)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(path, f"{what} must be UTF-8 text: invalid byte 0x{raw[exc.start]:02x} at offset {exc.start}") from None
    return text.removeprefix("\ufeff")


def _file_type(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while composing and duplicate keys while constructing."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise SpecError("", f"nested deeper than {MAX_DEPTH} levels (line {mark.line + 1})")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):  # type: ignore[no-untyped-def]
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # unhashable: SafeLoader reports it
            if key in seen:
                raise SpecError(
                    str(key), f"duplicate key (line {key_node.start_mark.line + 1}); each key may appear once"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(root: yaml.Node) -> int:
    """How many nodes the document has with every alias expanded, computed without expanding it."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)] = 1
            continue
        children = (
            [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else list(node.value)
        )
        if done:
            sizes[id(node)] = min(MAX_NODES + 1, 1 + sum(sizes.get(id(c), 0) for c in children))
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


def parse_yaml(text: str) -> list[Any]:
    """Every non-empty document of a YAML stream, bounded as this module says."""
    loader = _BoundedLoader(text)
    try:
        docs = []
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            if _expanded_size(node) > MAX_NODES:
                raise SpecError("", f"too large: more than {MAX_NODES} values once its aliases are expanded")
            value = loader.construct_document(node)
            if value is not None:
                docs.append(value)
        return docs
    finally:
        loader.dispose()


def parse_json(text: str) -> list[Any]:
    def strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise SpecError(key, "duplicate key; each key may appear once")
            result[key] = value
        return result

    try:
        return [json.loads(text, object_pairs_hook=strict_object)]
    except RecursionError:
        raise SpecError("", f"nested deeper than {MAX_DEPTH} levels") from None


def check_values(value: Any, path: str = "") -> None:
    """Depth, total size, and no string the kernel would refuse (NUL bytes, over MAX_STRING)."""
    from shared.specs.common import join

    count = 0
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        count += 1
        if count > MAX_NODES:
            raise SpecError(path, f"too large: more than {MAX_NODES} values")
        if depth > MAX_DEPTH:
            raise SpecError(where, f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(item, str):
            check_text(item, where or "spec")
        elif isinstance(item, Mapping):
            for k, v in item.items():
                if isinstance(k, str):
                    check_text(k, join(where, "<key>"))
                stack.append((v, join(where, str(k)), depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((v, join(where, i), depth + 1) for i, v in enumerate(item))


def check_text(text: str, field: str, limit: int = MAX_STRING) -> None:
    """A value that will become a process argument, an env value or an object field."""
    if "\x00" in text:
        raise SpecError(field, "must not contain a NUL byte")
    if len(text.encode("utf-8", "surrogatepass")) > limit:
        raise SpecError(field, f"is longer than {limit} bytes")


def load_document(path: str) -> dict[str, Any]:
    """One YAML or JSON mapping from a file, bounded, with every failure one line naming the file."""
    text = read_text(path)
    is_json = path.endswith(".json")
    try:
        docs = parse_json(text) if is_json else parse_yaml(text)
    except SpecError as exc:
        where = f"{path}: {exc.path}" if exc.path else path
        raise SpecError(where, exc.detail) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(path, f"not valid {'JSON' if is_json else 'YAML'}: {exc}") from None
    except RecursionError:
        raise SpecError(path, f"nested deeper than {MAX_DEPTH} levels") from None
    if len(docs) != 1:
        raise SpecError(path, f"must hold exactly one document, found {len(docs)}")
    if not isinstance(docs[0], Mapping):
        from shared.specs.common import type_name

        raise SpecError(path, f"must hold a mapping, got {type_name(docs[0])}")
    check_values(docs[0])
    return dict(docs[0])
