"""Katib's File and TensorFlowEvent metrics collectors, for local trials (StdOut is `metrics.py`).

On a cluster the collector is a sidecar that reads the metrics file (or the TensorFlow event
directory) once the training container has finished. Here the same happens when the trial's
process exits, with Katib's parsing rules:
- File, TEXT: every line goes through the StdOut rules (the filter regexes, else the default);
- File, JSON: every line is one JSON object; a metric is the value of its name's key, which
  Katib takes only when it is a string (`{"loss": "0.25"}`); a line that is not a JSON object
  fails the whole file, as in Katib's collector;
- TensorFlowEvent: every event file (`*tfevents*`) under the directory, read with TensorBoard's
  own reader; a metric `loss` is every tensor summary whose tag starts with `loss`, and a metric
  `test/loss` one whose tag starts with `loss` in a file under a `test` folder (Katib's
  tfevent-metricscollector). Like Katib, only tensor summaries count (TF2 `tf.summary.scalar`,
  PyTorch's `add_scalar(..., new_style=True)`), not legacy simple values.

A local trial has no container file system: the collector's path is moved under the trial's
folder, and every absolute path in the trial spec that contains it or lies inside it
(`--log-path=/logs` for a collector reading `/logs/test`) is moved with it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.backends.local.metrics import MetricsCollector
from shared.specs.model import ExperimentSpec

_ABSOLUTE = re.compile(r"(?<![\w.~-])/[^\s\"'=:,;]*")


@dataclass(frozen=True)
class FileSource:
    """The (defaulted) metricsCollectorSpec source of a File or TensorFlowEvent collector."""

    kind: str  # File | TensorFlowEvent
    path: str  # absolute, as the trial's container sees it
    format: str = ""  # TEXT | JSON for File


def file_source(spec: ExperimentSpec) -> FileSource | None:
    if spec.metrics_collector not in ("File", "TensorFlowEvent"):
        return None
    mcs = (spec.manifest.get("spec") or {}).get("metricsCollectorSpec") or {}
    fs = (mcs.get("source") or {}).get("fileSystemPath") or {}
    return FileSource(spec.metrics_collector, os.path.normpath(fs["path"]), fs.get("format") or "")


def localize(source: FileSource, trial_spec: Any, root: Path) -> tuple[Any, Path]:
    """`trial_spec` with the collector's path (and paths around it) under `root`; the local path."""

    def move(match: re.Match[str]) -> str:
        text = match.group(0)
        path = os.path.normpath(text)
        if path != "/" and (path == source.path or _inside(path, source.path) or _inside(source.path, path)):
            return str(root) + path
        return text

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return _ABSOLUTE.sub(move, value)
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    local = Path(str(root) + source.path)
    (local if source.kind == "TensorFlowEvent" else local.parent).mkdir(parents=True, exist_ok=True)
    return walk(trial_spec), local


def _inside(path: str, folder: str) -> bool:
    return path.startswith(folder.rstrip("/") + "/")


def collect(source: FileSource, local: Path, collector: MetricsCollector, log: Callable[[str], None]) -> None:
    """Feed what the trial wrote to `collector` (called once its process has exited)."""
    if source.kind == "TensorFlowEvent":
        _tf_events(local, collector, log)
    elif source.format == "JSON":
        _json_lines(local, collector, log)
    else:
        for line in _lines(local, log):
            collector.feed(line)


def _lines(path: Path, log: Callable[[str], None]) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        log(f"[kubeflow-tasks] metrics file {path}: {exc.strerror or exc}")
        return []


def _json_lines(path: Path, collector: MetricsCollector, log: Callable[[str], None]) -> None:
    records = []
    for number, line in enumerate(_lines(path, log), 1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            log(f"[kubeflow-tasks] metrics file {path}: line {number} is not a JSON object; no metrics read")
            return  # Katib's collector fails on the file: none of its metrics count
        records.append(record)
    for record in records:
        for name in collector.metric_names:
            value = record.get(name)
            if isinstance(value, str):
                collector.record(name, value)


def _tf_events(folder: Path, collector: MetricsCollector, log: Callable[[str], None]) -> None:
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    files = sorted(p for p in folder.rglob("*") if p.is_file() and "tfevents" in p.name)
    if not files:
        log(f"[kubeflow-tasks] no TensorFlow event files under {folder}")
    for file in files:
        events = event_accumulator.EventAccumulator(str(file), size_guidance={event_accumulator.TENSORS: 0})
        try:
            events.Reload()
        except Exception as exc:  # a truncated or foreign file: Katib's collector would fail on it too
            log(f"[kubeflow-tasks] cannot read {file}: {exc}")
            continue
        for tag in events.Tags()[event_accumulator.TENSORS]:
            for name in collector.metric_names:
                parts = name.split("/")
                folder_name = "/".join(parts[:-1])
                if not tag.startswith(parts[-1]) or (folder_name and not str(file.parent).endswith(folder_name)):
                    continue
                for tensor in events.Tensors(tag):
                    value = tensor_util.make_ndarray(tensor.tensor_proto)
                    collector.record(name, str(value.item() if value.size == 1 else value))
