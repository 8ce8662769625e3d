"""Compiled KFP pipelines, read the way the KFP API server reads an uploaded package.

One module reads pipelines for both backends, the CLI, `PipelineRun` documents, Airflow and
DolphinScheduler. What the server does (pipelines 2.17, `server/util.go` and
`template/v2_template.go`), and so what this does:
- a package is a `.yaml`/`.yml`/`.json` file, a `.tar.gz`/`.tgz` holding the YAML (its first
  `.yaml` member) or a `.zip` holding exactly one file;
- the file is a stream of YAML documents: one PipelineSpec and, from kfp-kubernetes, at most one
  PlatformSpec (`platforms.kubernetes`); both go to the server with the run;
- each is parsed strictly with the `kfp-pipeline-spec` protobuf messages (an unknown or misspelt
  field is an error, as with Go's protojson); then the schema version must be 2.1.0 and the
  pipeline must have a name and a root.

Errors are one `SpecError` naming the field inside the pipeline (`root.dag.tasks[echo].x`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import json
import re
import sys
import tarfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.errors import SpecError
from shared.specs import common as c

SCHEMA_VERSION = "2.1.0"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
PACKAGE_SUFFIXES = (".yaml", ".yml", ".json", *ARCHIVE_SUFFIXES)
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_AT_RE = re.compile(r' at "?(?P<at>[^"\s]+)')
_UNKNOWN_RE = re.compile(r'Message type "(?P<type>[\w.]+)" has no field named "(?P<field>[^"]+)"')
_AVAILABLE_RE = re.compile(r'Available Fields\(except extensions\): "\[(?P<fields>[^\]]*)\]"')


@dataclass(frozen=True)
class PipelinePackage:
    """A compiled pipeline: its PipelineSpec and the optional (kfp-kubernetes) PlatformSpec."""

    path: str
    pipeline_spec: Mapping[str, Any]
    platform_spec: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        return str(self.pipeline_spec["pipelineInfo"]["name"])

    @property
    def inputs(self) -> dict[str, Any]:
        """The root's declared input parameters: name -> ParameterSpec mapping."""
        root = self.pipeline_spec.get("root") or {}
        return dict((root.get("inputDefinitions") or {}).get("parameters") or {})

    def kubernetes_executors(self) -> dict[str, dict[str, Any]]:
        """kfp-kubernetes settings per executor label (`exec-x`): secretAsEnv, nodeSelector, ..."""
        kubernetes = ((self.platform_spec or {}).get("platforms") or {}).get("kubernetes") or {}
        return dict((kubernetes.get("deploymentSpec") or {}).get("executors") or {})

    def ir_documents(self) -> list[dict[str, Any]]:
        """What the server keeps and what kfp.local loads: the PipelineSpec, then the PlatformSpec."""
        docs = [json.loads(json.dumps(self.pipeline_spec))]
        if self.platform_spec is not None:
            docs.append(json.loads(json.dumps(self.platform_spec)))
        return docs


def is_package_path(path: str) -> bool:
    return path.lower().endswith(PACKAGE_SUFFIXES)


def is_archive(path: str) -> bool:
    return path.lower().endswith(ARCHIVE_SUFFIXES)


def looks_like_pipeline_spec(doc: Any) -> bool:
    """A document meant as a PipelineSpec (what `kfp.compiler` writes), valid or not."""
    return isinstance(doc, Mapping) and "pipelineInfo" in doc and ("root" in doc or "deploymentSpec" in doc)


def looks_like_platform_spec(doc: Any) -> bool:
    return isinstance(doc, Mapping) and "platforms" in doc


def read_package(path: str) -> PipelinePackage:
    """Read and validate the compiled pipeline at `path` (any package form the server takes)."""
    return parse_documents(read_documents(path), path)


def read_documents(path: str) -> list[Any]:
    """The YAML (or JSON) documents of a package file, archives unpacked; empty ones dropped."""
    if not is_archive(path):
        return c.load_documents(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise SpecError(path, f"cannot read the pipeline package: {exc.strerror or exc}") from None
    return c.parse_documents(_unpack(data, path), path)


def _unpack(data: bytes, path: str) -> str:
    """The pipeline YAML inside a .tar.gz (first .yaml member) or a .zip (its only file)."""
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                files = [i for i in archive.infolist() if not i.is_dir()]
                if len(files) != 1:
                    raise SpecError(path, f"a pipeline .zip must hold exactly one file, found {len(files)}")
                return archive.read(files[0]).decode("utf-8")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith((".yaml", ".yml")):
                    extracted = archive.extractfile(member)
                    assert extracted is not None
                    return extracted.read().decode("utf-8")
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise SpecError(path, f"not a valid pipeline package: {exc}") from None
    except UnicodeDecodeError:
        raise SpecError(path, "the pipeline in the package is not UTF-8 text") from None
    raise SpecError(path, "the .tar.gz holds no .yaml file (a pipeline package holds the compiled YAML)")


def parse_documents(docs: list[Any], path: str) -> PipelinePackage:
    """Pick out and validate the PipelineSpec and the PlatformSpec among a file's documents."""
    pipeline: Mapping[str, Any] | None = None
    platform: Mapping[str, Any] | None = None
    for doc in docs:
        if looks_like_pipeline_spec(doc):
            if pipeline is not None:
                raise SpecError(path, "holds more than one pipeline spec (one PipelineSpec per file)")
            validate_pipeline_spec(doc)
            pipeline = doc
        elif looks_like_platform_spec(doc):
            if platform is not None:
                raise SpecError(path, "holds more than one platform spec")
            validate_platform_spec(doc)
            platform = doc
    if pipeline is None:
        found = f"{len(docs)} document(s) without pipelineInfo and root" if docs else "no document"
        raise SpecError(path, f"not a compiled KFP pipeline: {found}")
    return PipelinePackage(path=path, pipeline_spec=pipeline, platform_spec=platform)


def validate_pipeline_spec(doc: Mapping[str, Any]) -> None:
    """The server's checks: a strict protobuf parse, schema version 2.1.0, a name, a root."""
    _parse_strictly(doc, _messages().PipelineSpec(), "PipelineSpec")
    version = doc.get("schemaVersion")
    if version != SCHEMA_VERSION:
        raise SpecError("schemaVersion", f"KFP only supports schema version {SCHEMA_VERSION}, got {version!r}")
    name = (doc.get("pipelineInfo") or {}).get("name")
    if not name:
        raise SpecError("pipelineInfo.name", "required: the pipeline has no name")
    if not _NAME_RE.search(str(name)):
        raise SpecError(
            "pipelineInfo.name",
            f"{name!r}: lower-case letters, digits, '-' or '.', starting and ending with a letter or digit",
        )
    if not doc.get("root"):
        raise SpecError("root", "required: the pipeline has no root component")


def validate_platform_spec(doc: Mapping[str, Any]) -> None:
    _parse_strictly(doc, _messages().PlatformSpec(), "PlatformSpec")


_PB2 = "kfp.pipeline_spec.pipeline_spec_pb2"


def _messages() -> Any:
    """kfp-pipeline-spec's generated messages, without importing the `kfp` package.

    Why not `from kfp.pipeline_spec import ...`: that runs `kfp/__init__`, which loads the whole
    SDK and its client (about a second, and what schedulers parsing specs must not pay). The
    module is loaded from its file under its own name, so a later `import kfp` finds it in
    sys.modules and the protobuf descriptors are registered once.
    """
    if _PB2 in sys.modules:
        return sys.modules[_PB2]
    try:
        location = importlib.metadata.distribution("kfp-pipeline-spec").locate_file(
            "kfp/pipeline_spec/pipeline_spec_pb2.py"
        )
    except importlib.metadata.PackageNotFoundError:
        raise SpecError("pipeline", "reading a compiled pipeline needs kfp-pipeline-spec (pip install kfp)") from None
    spec = importlib.util.spec_from_file_location(_PB2, str(location))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[_PB2] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_PB2]
        raise
    return module


def _parse_strictly(doc: Mapping[str, Any], message: Any, root: str) -> None:
    from google.protobuf import json_format

    try:
        json_format.ParseDict(_json_ready(doc), message, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        path, problem = _explain(str(exc), root)
        raise SpecError(path or root, problem) from None


def _json_ready(doc: Any) -> Any:
    """YAML may load dates and such; the server sees the JSON text of the document."""
    return json.loads(json.dumps(doc, default=str))


def _explain(error: str, root: str) -> tuple[str, str]:
    """protobuf's nested "Failed to parse x field: ..." message -> (field path, innermost problem)."""
    inner = re.sub(r"^(Failed to parse \w+ field: )+", "", error.strip())
    at_match = _AT_RE.search(inner)
    at = at_match["at"].rstrip(".") if at_match else ""
    at = at[len(root) :].lstrip(".") if at.startswith(root) else at
    unknown = _UNKNOWN_RE.search(inner)
    if unknown:
        available = _AVAILABLE_RE.search(inner)
        known = [f.strip(" '") for f in available["fields"].split(",")] if available else []
        return c.join(at, unknown["field"]), f"unknown field; {unknown['type']} has: {c.names(known)}"
    problem = inner[: at_match.start()] if at_match else inner
    return at, " ".join(problem.split()).rstrip(".")
