"""The key rule on the kubernetes backend (issue 10, item 3): a retry with the same spec adopts, another
spec under the key while the work runs is refused naming the object that holds the key."""

from __future__ import annotations

import pytest

from shared.errors import KeyConflict
from shared.operations import submit_or_adopt
from shared.specs import load_spec


def job(command: str) -> dict:
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": "keyed"},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "pytorch", "image": "python:3.11", "command": ["python", "-c", command]}]}}}}},
    }


def test_another_spec_under_a_running_key_is_refused_and_the_same_spec_adopts(k8s_double, tmp_path):
    from shared.backends.kubernetes import KubernetesBackend

    k8s_double.set_behaviour(job_run_seconds=60)
    backend = KubernetesBackend(kubeconfig=str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig")))
    first = submit_or_adopt(backend, load_spec(job("print(1)")), "nightly")
    again = submit_or_adopt(backend, load_spec(job("print(1)")), "nightly")
    assert again.adopted and again.handle.id == first.handle.id
    with pytest.raises(KeyConflict, match=first.handle.id):
        submit_or_adopt(backend, load_spec(job("print(2)")), "nightly")
    assert len(k8s_double.objects("pytorchjobs")) == 1
    backend.cancel(first.handle)
