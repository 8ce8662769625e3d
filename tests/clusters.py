"""One face for the two clusters the Kubernetes end-to-end tests run against.

`double`: our wire-level double (fast, fault injection). `real`: the real kube-apiserver with the
real training operator and kwok (tests/realstack). A test written against `TestCluster` runs on both;
where they disagree, the real one is right and the double gets fixed.

How a test steers the work differs underneath: the double reads outcome annotations on the object,
kwok reads duration/exit-code annotations on the pods (copied from the replica templates).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from shared.backends.kubernetes import KubernetesBackend

DOUBLE_OUTCOME = "double.kubeflow-tasks.dev/outcome"
DOUBLE_RUN_SECONDS = "double.kubeflow-tasks.dev/run-seconds"
POD_DURATION = "kubeflow-tasks.test/duration-seconds"
POD_EXIT_CODE = "kubeflow-tasks.test/exit-code"
REPLICA_SPECS = {"PyTorchJob": "pytorchReplicaSpecs", "TFJob": "tfReplicaSpecs"}
PLURALS = {"PyTorchJob": "pytorchjobs", "TFJob": "tfjobs", "Experiment": "experiments"}
HANG_SECONDS = 3600


@dataclass
class TestCluster:
    __test__ = False  # not a test class, whatever pytest thinks of the name

    kind: str  # "double" or "real"
    namespace: str
    kubeconfig_path: str | None = None
    double: Any = None
    real: Any = None

    # -- connecting

    def kubeconfig(self, tmp_path: Path) -> Path:
        if self.double is not None:
            return self.double.write_kubeconfig(tmp_path / "kubeconfig", namespace=self.namespace)
        return Path(self.kubeconfig_path)

    def backend(self, tmp_path: Path, **options: Any) -> KubernetesBackend:
        kfp = {}
        if self.double is not None:
            kfp = {"kfp_host": self.double.kfp_url, "kfp_token": self.double.kfp_token, "kfp_poll_interval": 0.2}
        return KubernetesBackend(kubeconfig=str(self.kubeconfig(tmp_path)), **kfp, **options)

    def api_client(self, tmp_path: Path):
        from kubernetes import config

        return config.new_client_from_config(str(self.kubeconfig(tmp_path)))

    # -- steering the work

    def training_manifest(self, source: Path | dict, *, seconds: float = 0.2, exit_code: int = 0,
                          hang: bool = False, name: str | None = None) -> dict[str, Any]:
        """A copy of a PyTorchJob/TFJob manifest whose replicas run `seconds` and end with `exit_code`
        (or never end), in this cluster's namespace."""
        doc = copy.deepcopy(source) if isinstance(source, dict) else yaml.safe_load(Path(source).read_text())
        meta = doc.setdefault("metadata", {})
        meta["namespace"] = self.namespace
        if name:
            meta["name"] = name
        if self.double is not None:
            notes = meta.setdefault("annotations", {})
            notes[DOUBLE_RUN_SECONDS] = str(seconds)
            notes[DOUBLE_OUTCOME] = "Hang" if hang else ("Succeeded" if exit_code == 0 else "Failed")
            return doc
        for replica in doc["spec"][REPLICA_SPECS[doc["kind"]]].values():
            notes = replica.setdefault("template", {}).setdefault("metadata", {}).setdefault("annotations", {})
            notes[POD_DURATION] = str(HANG_SECONDS if hang else max(int(round(seconds)), 1))
            notes[POD_EXIT_CODE] = str(exit_code)
        return doc

    def write(self, doc: dict[str, Any], tmp_path: Path, stem: str) -> Path:
        path = tmp_path / f"{stem}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    # -- looking

    def objects(self, plural: str, tmp_path: Path) -> list[dict[str, Any]]:
        if self.double is not None:
            return self.double.objects(plural, self.namespace)
        from kubernetes import client

        api = client.CustomObjectsApi(self.api_client(tmp_path))
        return api.list_namespaced_custom_object("kubeflow.org", "v1", self.namespace, plural)["items"]
