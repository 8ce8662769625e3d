"""Path-aware field readers shared by the three parsers.

Every reader takes the manifest path of the object it reads from, so each failure is one
`SpecError` naming the exact field (`spec.pytorchReplicaSpecs.Worker.replicas: ...`), the way
the Kubernetes API server names fields (`key` gives the webhooks' spelling of map entries).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

from shared.errors import SpecError

_MISSING: Any = object()
_PARAM_RE = re.compile(r"\$\{params\.([^}]*)\}")
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")  # a Kubernetes DNS-1035 label (length checked apart)


def join(path: str, key: str | int) -> str:
    """`spec` + `x` -> `spec.x`; `spec.containers` + 0 -> `spec.containers[0]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def key(path: str, name: str) -> str:
    """`spec.pytorchReplicaSpecs` + `Master` -> `spec.pytorchReplicaSpecs[Master]`.

    Why two spellings of a map entry: the API server's schema errors write it `.Master` (`join`),
    the Kubeflow webhooks write it with Go's `field.Path.Key`; an error names the field the way
    the layer of the cluster that enforces the same rule would.
    """
    return f"{path}[{name}]"


def type_name(value: Any) -> str:
    """The YAML word for a value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, Mapping):
        return "mapping"
    if isinstance(value, list | tuple):
        return "list"
    return type(value).__name__


def names(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "none"


# ---------------------------------------------------------------- readers


def mapping(obj: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> dict[str, Any] | None:
    """A nested mapping, or None when absent and optional."""
    value = obj.get(key, _MISSING)
    where = join(path, key)
    if value is _MISSING or value is None:
        if required:
            raise SpecError(where, "required (a mapping)")
        return None
    if not isinstance(value, Mapping):
        raise SpecError(where, f"must be a mapping, got {type_name(value)}")
    return dict(value)


def items(obj: Mapping[str, Any], key: str, path: str, *, required: bool = False) -> list[Any]:
    """A list (empty when absent and optional)."""
    value = obj.get(key, _MISSING)
    where = join(path, key)
    if value is _MISSING or value is None:
        if required:
            raise SpecError(where, "required (a list)")
        return []
    if not isinstance(value, list | tuple):
        raise SpecError(where, f"must be a list, got {type_name(value)}")
    return list(value)


def string(
    obj: Mapping[str, Any],
    key: str,
    path: str,
    *,
    required: bool = False,
    default: str | None = None,
    choices: Iterable[str] | None = None,
) -> str | None:
    """A string field; `choices` makes it an enum. Numbers are refused, as the API server does."""
    value = obj.get(key, _MISSING)
    where = join(path, key)
    if value is _MISSING or value is None:
        if required:
            raise SpecError(where, "required (a string)")
        return default
    if not isinstance(value, str):
        hint = (
            f' (quote it: "{value}")'
            if isinstance(value, int | float) and not isinstance(value, bool)
            else ""
        )
        raise SpecError(where, f"must be a string, got {type_name(value)}{hint}")
    if required and not value:
        raise SpecError(where, "must not be empty")
    if choices is not None:
        allowed = list(choices)
        if value not in allowed:
            raise SpecError(where, f"must be one of {', '.join(repr(c) for c in allowed)}, got {value!r}")
    return value


def integer(
    obj: Mapping[str, Any],
    key: str,
    path: str,
    *,
    default: int | None = None,
    minimum: int | None = None,
) -> int | None:
    """An integer field (not a bool, not a string), optionally bounded below."""
    value = obj.get(key, _MISSING)
    where = join(path, key)
    if value is _MISSING or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, f"must be an integer, got {type_name(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise SpecError(where, f"must be an integer >= {minimum}, got {value}")
    return value


def boolean(obj: Mapping[str, Any], key: str, path: str, *, default: bool = False) -> bool:
    value = obj.get(key, _MISSING)
    if value is _MISSING or value is None:
        return default
    if not isinstance(value, bool):
        raise SpecError(join(path, key), f"must be true or false, got {type_name(value)} {value!r}")
    return value


def string_list(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    """A list of strings, e.g. a container's command or args."""
    values = items(obj, key, path)
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise SpecError(
                join(join(path, key), i), f"must be a string, got {type_name(value)} {value!r} (quote it)"
            )
    return tuple(values)


def number(text: str, path: str, *, integral: bool = False) -> float:
    """A number written as a string (Katib keeps feasible-space bounds and settings as strings)."""
    try:
        value = float(text)
    except ValueError:
        raise SpecError(path, f"must be {'an integer' if integral else 'a number'}, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise SpecError(path, f"must be a finite number, got {text!r}")
    if integral and not re.fullmatch(r"[+-]?\d+", text.strip()):
        raise SpecError(path, f"must be an integer, got {text!r}")
    return value


def reject_unknown(obj: Mapping[str, Any], allowed: Iterable[str], path: str, what: str) -> None:
    """Unknown keys are almost always typos; say which keys exist instead of silently dropping them."""
    allowed = set(allowed)
    for key in obj:
        if key not in allowed:
            raise SpecError(join(path, str(key)), f"unknown field; {what} has: {names(allowed)}")


def check_name(value: str, path: str, *, max_len: int, rule: str) -> None:
    """DNS-1035 label style names: lower-case alphanumerics and '-', starting with a letter."""
    if len(value) > max_len or not DNS_1035.fullmatch(value):
        raise SpecError(
            path,
            f"{value!r} is not a valid name: {rule} (lower-case letters, digits and '-', "
            f"starting with a letter, ending with a letter or digit, at most {max_len} characters)",
        )


def header(manifest: Mapping[str, Any], api_version: str, kinds: Iterable[str]) -> str:
    """Check apiVersion/kind and return the kind."""
    kinds = list(kinds)
    kind = string(manifest, "kind", "", required=True, choices=kinds)
    found = manifest.get("apiVersion")
    if found != api_version:
        raise SpecError("apiVersion", f"must be {api_version!r} for a {kind}, got {found!r}")
    return kind


def metadata(manifest: Mapping[str, Any]) -> tuple[str, str | None]:
    """(name, namespace) from metadata."""
    meta = mapping(manifest, "metadata", "", required=True)
    assert meta is not None
    name = string(meta, "name", "metadata", required=True)
    namespace = string(meta, "namespace", "metadata")
    return name, namespace or None


# ---------------------------------------------------------------- documents and ${params.X}


def load_documents(path: str) -> list[Any]:
    """Every non-empty YAML document of a file (a JSON file is one): read and parsed bounded and
    strict (shared.specs.documents: regular files only, size, depth, aliases, duplicate keys)."""
    from shared.specs.documents import read_text

    return parse_documents(read_text(path), path, as_json=path.endswith(".json"))


def parse_documents(text: str, where: str, *, as_json: bool = False) -> list[Any]:
    """The non-empty documents of YAML (or JSON) text read from `where`; errors in one line."""
    import yaml

    from shared.specs.documents import MAX_DEPTH, check_values, parse_json, parse_yaml

    kind = "JSON" if as_json else "YAML"
    try:
        docs = parse_json(text) if as_json else parse_yaml(text)
    except SpecError as exc:
        raise SpecError(f"{where}: {exc.path}" if exc.path else where, exc.detail) from None
    except (yaml.YAMLError, ValueError) as exc:
        raise SpecError(where, f"not valid {kind}: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise SpecError(where, f"nested deeper than {MAX_DEPTH} levels") from None
    docs = [d for d in docs if d is not None]
    for doc in docs:
        check_values(doc)
    return docs


def load_document(path: str) -> dict[str, Any]:
    """One YAML or JSON mapping from a file, with parse errors reduced to one line."""
    return single_document(load_documents(path), path)


def single_document(docs: list[Any], path: str) -> dict[str, Any]:
    """The one mapping a manifest file holds (a Kubernetes manifest here is one object)."""
    if len(docs) != 1:
        raise SpecError(path, f"must hold exactly one document, found {len(docs)}")
    if not isinstance(docs[0], Mapping):
        raise SpecError(path, f"must hold a mapping, got {type_name(docs[0])}")
    return dict(docs[0])


def substitute_params(manifest: Mapping[str, Any], params: Mapping[str, str] | None) -> dict[str, Any]:
    """A copy of `manifest` with `${params.NAME}` replaced in every string value.

    Why strict both ways: an unknown name would otherwise reach the cluster as literal text, and
    an unused parameter usually means a typo on the command line.
    """
    params = dict(params or {})
    used: set[str] = set()

    def replace(text: str, path: str) -> str:
        def one(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in params:
                raise SpecError(
                    path, f"unknown parameter {key!r} (given: {names(params) if params else 'none'})"
                )
            used.add(key)
            return str(params[key])

        return _PARAM_RE.sub(one, text)

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, str):
            return replace(value, path)
        if isinstance(value, Mapping):
            return {k: walk(v, join(path, str(k))) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [walk(v, join(path, i)) for i, v in enumerate(value)]
        return value

    result = walk(manifest, "")
    unused = set(params) - used
    if unused:
        raise SpecError(
            "params", f"not used by the manifest: {names(unused)} (it has no ${{params.NAME}} for them)"
        )
    return result


def resolve_base_dir(base_dir: str | None) -> str:
    return os.path.abspath(base_dir) if base_dir else os.getcwd()
