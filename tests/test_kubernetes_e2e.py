"""Acceptance of the Kubernetes backend against the wire-level double (issue 3).

Real `kubernetes` and `kfp_server_api` clients talk HTTP to the double on loopback; the double
validates objects like the API server and the webhooks, plays the controllers and injects faults.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.backends.kubernetes import KubernetesBackend, naming, pipelines
from shared.errors import DeadlineExceeded, SpecError
from shared.operations import submit_or_adopt, wait_for
from shared.specs import load_spec
from shared.status import State

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "tests" / "data" / "specs"
COMMODITY = REPO / "dags" / "commodity"
OUTCOME = "double.kubeflow-tasks.dev/outcome"
RUN_SECONDS = "double.kubeflow-tasks.dev/run-seconds"
PLURALS = {"PyTorchJob": "pytorchjobs", "TFJob": "tfjobs", "Experiment": "experiments"}

pytestmark = pytest.mark.e2e


def backend_for(double, tmp_path: Path, **options: Any) -> KubernetesBackend:
    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
    return KubernetesBackend(
        kubeconfig=str(kubeconfig),
        kfp_host=double.kfp_url,
        kfp_token=double.kfp_token,
        kfp_poll_interval=0.2,
        **options,
    )


def annotated(path: Path, tmp_path: Path, annotations: dict[str, str], name: str | None = None) -> Path:
    """A copy of a manifest with the double's outcome annotations (and another name)."""
    doc = yaml.safe_load(path.read_text())
    doc["metadata"].setdefault("annotations", {}).update(annotations)
    doc["metadata"].pop("namespace", None)
    if name:
        doc["metadata"]["name"] = name
    out = tmp_path / f"{name or path.stem}-{len(list(tmp_path.iterdir()))}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def small_experiment(tmp_path: Path) -> Path:
    doc = yaml.safe_load((COMMODITY / "experiment.yaml").read_text())
    doc["spec"].update(maxTrialCount=2, parallelTrialCount=2, maxFailedTrialCount=1)
    doc["metadata"]["annotations"] = {RUN_SECONDS: "0.05"}
    out = tmp_path / "experiment-small.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def pipeline_run(tmp_path: Path, name: str) -> Path:
    doc = yaml.safe_load((SPECS / "pipeline-run.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"]["pipeline"] = str(SPECS / "pipelines" / "add.yaml")
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def by_key(objects: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for obj in objects:
        key = obj["metadata"]["annotations"][naming.KEY_ANNOTATION]
        counts[key] = counts.get(key, 0) + 1
    return counts


# ---------------------------------------------------------------- (a) faults: none lost, none duplicated


def test_submissions_under_random_faults_each_end_with_exactly_one_object(k8s_double, tmp_path):
    double = k8s_double
    double.set_behaviour(job_run_seconds=0.1, kfp_run_seconds=0.1, trial_run_seconds=0.05)
    backend = backend_for(double, tmp_path)
    specs = {
        "pipeline": load_spec(pipeline_run(tmp_path, "faulty")),
        "experiment": load_spec(small_experiment(tmp_path), params={"data_path": "/data/prices.csv"}),
        "pytorchjob": load_spec(SPECS / "pytorch-mnist.yaml"),
        "tfjob": load_spec(SPECS / "tfjob-dist.yaml"),
    }
    work = [("pipeline", i) for i in range(50)] + [("experiment", i) for i in range(50)]
    work += [("pytorchjob" if i % 2 else "tfjob", i) for i in range(50)]
    double.faults.configure(rate=0.2, seed=3)
    # Waiters share a handful of long watches, so few watch requests meet the random faults: cut and
    # expire some of them on purpose as well.
    double.faults.inject("watch-cut", count=3, path_contains="watch=")
    double.faults.inject("410", count=3, path_contains="watch=")

    async def one(what: str, i: int):
        key = f"faults/{what}/{i}"
        submission = await asyncio.to_thread(submit_or_adopt, backend, specs[what], key)
        status = await wait_for(backend, submission.handle, deadline=time.time() + 120)
        return key, submission.handle, status

    async def all_of_them():
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
        return await asyncio.gather(*(one(what, i) for what, i in work))

    results = asyncio.run(all_of_them())
    double.faults.configure(rate=0.0)
    assert len(double.faults.injected) > 100  # the faults really happened, of every kind
    assert {kind for kind, _, _ in double.faults.injected} >= {
        "500",
        "503",
        "429",
        "reset",
        "watch-cut",
        "410",
    }
    assert [(key, s.state) for key, _, s in results if s.state is not State.SUCCEEDED] == []

    keys = {key for key, _, _ in results}
    runs = [r for r in double.runs() if r["display_name"].startswith("faulty-")]
    assert sorted(pipelines.key_of(r) for r in runs) == sorted(
        k for k in keys if "/pipeline/" in k
    )
    for resource, plural in PLURALS.items():
        counts = by_key(double.objects(plural, "kubeflow") + double.objects(plural, "default"))
        expected = {key for key, handle, _ in results if handle.resource == resource}
        assert set(counts) == expected and set(counts.values()) == {1}, resource


# ---------------------------------------------------------------- (b) a killed waiter's successor adopts


def test_a_waiting_process_killed_and_restarted_adopts_its_object(k8s_double, tmp_path):
    double = k8s_double
    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
    spec = annotated(SPECS / "pytorch-mnist.yaml", tmp_path, {RUN_SECONDS: "3"})
    command = [
        sys.executable, "-m", "shared.cli", "run", "training-job", "--spec", str(spec),
        "--backend", "kubernetes", "--kubeconfig", str(kubeconfig), "--key", "nightly/train/1", "--output", "json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    deadline = time.monotonic() + 30
    while not double.objects("pytorchjobs") and time.monotonic() < deadline:
        assert first.poll() is None, first.stderr.read().decode()
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    first.stdout.close()
    first.stderr.close()
    assert len(double.objects("pytorchjobs")) == 1

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["adopted"] is True and result["state"] == "SUCCEEDED"
    assert "adopted PyTorchJob" in second.stderr
    assert len(double.objects("pytorchjobs")) == 1


# ---------------------------------------------------------------- (c) a passing deadline cancels remotely


def test_a_passing_deadline_cancels_the_remote_object_within_5s(k8s_double, tmp_path):
    double = k8s_double
    double.set_behaviour(kfp_outcomes={"hang-pipe": "HANG"})
    backend = backend_for(double, tmp_path)
    specs = [
        load_spec(annotated(SPECS / "pytorch-mnist.yaml", tmp_path, {OUTCOME: "Hang"}, "hang-job")),
        load_spec(annotated(SPECS / "katib-random.yaml", tmp_path, {OUTCOME: "Hang"}, "hang-exp")),
        load_spec(pipeline_run(tmp_path, "hang-pipe")),
    ]

    async def one(spec):
        submission = await asyncio.to_thread(submit_or_adopt, backend, spec, f"deadline/{spec.name}")
        deadline = time.time() + 1.0
        passed_at = time.monotonic() + (deadline - time.time())
        with pytest.raises(DeadlineExceeded) as caught:
            await wait_for(backend, submission.handle, deadline=deadline)
        return submission.handle, caught.value.status, passed_at

    async def all_of_them():
        return await asyncio.wait_for(asyncio.gather(*(one(s) for s in specs)), 30)

    results = asyncio.run(all_of_them())
    for handle, status, passed_at in results:
        assert status.state is State.CANCELLED, (handle.id, status)
        if handle.id.startswith("kfp/"):
            events = double.events_at[f"runs/{handle.id[4:]}"]
            final = "CANCELED"
        else:
            namespace, plural, name = handle.id.split("/")
            events = double.events_at[f"{plural}/{namespace}/{name}"]
            final = "Deleted"
            assert double.objects(plural, namespace) == []
        gone = [at for at, what in events if what == final]
        assert gone and gone[0] - passed_at < 5.0, (handle.id, events)


# ---------------------------------------------------------------- (d) rejected before anything is sent

DELETE = object()
_PT = ["spec", "pytorchReplicaSpecs"]
_TF = ["spec", "tfReplicaSpecs"]
_C0 = ["template", "spec", "containers", 0]
# (file, [(path, value or DELETE)], the field the cluster names): webhook rules are written with
# Go's `field.Path.Key` (`[Master]`), schema errors with the API server's `.Master`.
INVALID = {
    "webhook:master-replicas": (
        "pytorch-mnist.yaml",
        [([*_PT, "Master", "replicas"], 2)],
        "spec.pytorchReplicaSpecs[Master].replicas",
    ),
    "webhook:worker-replicas-0": (
        "pytorch-mnist.yaml",
        [([*_PT, "Worker", "replicas"], 0)],
        "spec.pytorchReplicaSpecs[Worker].replicas",
    ),
    # The CRD's scale subresource (specReplicasPath: .spec.pytorchReplicaSpecs.Worker.replicas) makes
    # the API server refuse this one before the webhook, naming the path the way a JSONPath does.
    "scale:worker-replicas-negative": (
        "pytorch-mnist.yaml",
        [([*_PT, "Worker", "replicas"], -1)],
        "spec.pytorchReplicaSpecs.Worker.replicas",
    ),
    "webhook:replica-type": (
        "pytorch-mnist.yaml",
        [
            (
                [*_PT, "Chief"],
                {
                    "replicas": 1,
                    "template": {"spec": {"containers": [{"name": "pytorch", "image": "busybox"}]}},
                },
            )
        ],
        "spec.pytorchReplicaSpecs[Chief]",
    ),
    "webhook:no-image": (
        "pytorch-mnist.yaml",
        [([*_PT, "Master", *_C0, "image"], DELETE)],
        "spec.pytorchReplicaSpecs[Master].template.spec.containers[0].image",
    ),
    "webhook:empty-image": (
        "pytorch-mnist.yaml",
        [([*_PT, "Worker", *_C0, "image"], "")],
        "spec.pytorchReplicaSpecs[Worker].template.spec.containers[0].image",
    ),
    "webhook:no-containers": (
        "pytorch-mnist.yaml",
        [([*_PT, "Worker", "template", "spec", "containers"], [])],
        "spec.pytorchReplicaSpecs[Worker].template.spec.containers",
    ),
    "webhook:no-template": (
        "pytorch-mnist.yaml",
        [([*_PT, "Worker", "template"], DELETE)],
        "spec.pytorchReplicaSpecs[Worker].template.spec.containers",
    ),
    "webhook:no-default-container": (
        "tfjob-dist.yaml",
        [([*_TF, "Worker", *_C0, "name"], "tf")],
        "spec.tfReplicaSpecs[Worker].template.spec.containers",
    ),
    "webhook:elastic-without-worker": (
        "pytorch-mnist.yaml",
        [(["spec", "elasticPolicy"], {"maxReplicas": 2}), ([*_PT, "Worker"], DELETE)],
        "spec.pytorchReplicaSpecs[Worker]",
    ),
    "webhook:tf-two-leaders": (
        "tfjob-dist.yaml",
        [
            (
                [*_TF, "Master"],
                {
                    "replicas": 1,
                    "template": {"spec": {"containers": [{"name": "tensorflow", "image": "busybox"}]}},
                },
            )
        ],
        "spec.tfReplicaSpecs",
    ),
    "schema:replicas-type": (
        "pytorch-mnist.yaml",
        [([*_PT, "Worker", "replicas"], "two")],
        "spec.pytorchReplicaSpecs.Worker.replicas",
    ),
    "schema:restart-policy-type": (
        "pytorch-mnist.yaml",
        [([*_PT, "Master", "restartPolicy"], 5)],
        "spec.pytorchReplicaSpecs.Master.restartPolicy",
    ),
    "schema:container-name-required": (
        "tfjob-dist.yaml",
        [([*_TF, "Worker", *_C0, "name"], DELETE)],
        "spec.tfReplicaSpecs.Worker.template.spec.containers[0].name",
    ),
    "schema:containers-required": (
        "pytorch-mnist.yaml",
        [([*_PT, "Master", "template", "spec", "containers"], DELETE)],
        "spec.pytorchReplicaSpecs.Master.template.spec.containers",
    ),
    "schema:image-type": (
        "pytorch-mnist.yaml",
        [([*_PT, "Master", *_C0, "image"], 7)],
        "spec.pytorchReplicaSpecs.Master.template.spec.containers[0].image",
    ),
    "katib:parallel-trial-count": (
        "katib-random.yaml",
        [(["spec", "parallelTrialCount"], 0)],
        "spec.parallelTrialCount",
    ),
    "katib:objective-type": (
        "katib-random.yaml",
        [(["spec", "objective", "type"], "biggest")],
        "spec.objective.type",
    ),
}


def field_named(status: dict) -> str:
    """The field a refusal names: a schema error's first cause (`.spec...` JSONPath style included),
    or, for a webhook's denial, which has no causes, the path its message starts with."""
    causes = (status.get("details") or {}).get("causes") or []
    if causes:
        return (causes[0].get("field") or "").lstrip(".")
    message = status.get("message", "").split("denied the request: ", 1)[-1]
    return message.lstrip("[").split(": ", 1)[0]  # several reasons come as "[a: ..., b: ...]"


@pytest.mark.parametrize("file,edits,field", INVALID.values(), ids=INVALID.keys())
def test_a_cr_the_cluster_would_reject_is_rejected_first_with_the_same_field(
    k8s_double, tmp_path, file, edits, field
):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    double = k8s_double
    manifest = yaml.safe_load((SPECS / file).read_text())
    manifest["metadata"]["namespace"] = "default"
    for path, value in edits:
        target = manifest
        for step in path[:-1]:
            target = target[step]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    backend = backend_for(double, tmp_path)
    before = double.request_count()
    with pytest.raises(SpecError) as ours:
        load_spec(manifest)  # what every adapter does before it hands the spec to a backend
    assert double.request_count() == before
    assert ours.value.path == field, ours.value

    group, version = manifest["apiVersion"].split("/")
    api = client.CustomObjectsApi(backend.cluster.api_client())
    with pytest.raises(ApiException) as theirs:
        api.create_namespaced_custom_object(group, version, "default", PLURALS[manifest["kind"]], manifest)
    body = json.loads(theirs.value.body)
    assert theirs.value.status in (400, 403, 422)
    assert field_named(body) == ours.value.path, (ours.value, body)


# ---------------------------------------------------------------- (e) the example specs run unchanged


DATA = {"data_path": "/data/prices.csv"}
EXAMPLES = {
    COMMODITY / "experiment.yaml": DATA,
    COMMODITY / "pytorchjob.yaml": {**DATA, "learning_rate": "0.05", "num_estimators": "20"},
    COMMODITY / "pipeline_run.yaml": DATA,
    SPECS / "pytorch-params.yaml": {"name": "params-job", "epochs": "2", "learning_rate": "0.1"},
}


def test_the_example_specs_submit_unchanged_and_complete(k8s_double, tmp_path):
    double = k8s_double
    double.set_behaviour(job_run_seconds=0.1, kfp_run_seconds=0.1, trial_run_seconds=0.02)
    backend = backend_for(double, tmp_path)
    files = [*EXAMPLES, *(p for p in sorted(SPECS.glob("*.yaml")) if p not in EXAMPLES)]
    loaded = [(path, load_spec(path, params=EXAMPLES.get(path))) for path in files]

    async def one(path, spec):
        submission = await asyncio.to_thread(submit_or_adopt, backend, spec, f"example/{path.name}")
        return path.name, await wait_for(backend, submission.handle, deadline=time.time() + 60)

    async def all_of_them():
        return await asyncio.gather(*(one(path, spec) for path, spec in loaded))

    results = asyncio.run(all_of_them())
    assert [(name, s.state, s.message) for name, s in results if s.state is not State.SUCCEEDED] == []
    assert len(results) == len(files) == 9
