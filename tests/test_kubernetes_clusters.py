"""The Kubernetes end-to-end suite, run against both clusters (issue 8).

`double` is our wire-level double; `real` is a real kube-apiserver with the real Kubeflow training
operator (and its validating webhook) and kwok playing the pods (tests/realstack). The same test, the
same example specs, the same assertions: where the two disagree, the real one is right.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from shared.backends.kubernetes import naming
from shared.errors import DeadlineExceeded, KeyConflict, SpecError
from shared.operations import submit_or_adopt, wait_for
from shared.specs import load_spec
from shared.status import State
from tests.clusters import PLURALS, TestCluster
from tests.test_kubernetes_e2e import DELETE, INVALID, field_named
from tests.waiting import wait_until

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "tests" / "data" / "specs"
COMMODITY = REPO / "dags" / "commodity"
DATA = {"data_path": "/data/prices.csv"}
TRAINING_EXAMPLES = {
    SPECS / "pytorch-mnist.yaml": None,
    SPECS / "tfjob-dist.yaml": None,
    SPECS / "pytorch-params.yaml": {"name": "params-job", "epochs": "2", "learning_rate": "0.1"},
    COMMODITY / "pytorchjob.yaml": {**DATA, "learning_rate": "0.05", "num_estimators": "20"},
}

pytestmark = pytest.mark.e2e


@pytest.fixture(params=["double", pytest.param("real", marks=pytest.mark.real)])
def cluster(request) -> TestCluster:
    if request.param == "double":
        return TestCluster("double", namespace="default", double=request.getfixturevalue("k8s_double"))
    real = request.getfixturevalue("real_kubernetes")
    return TestCluster("real", namespace=real.namespace, kubeconfig_path=real.kubeconfig, real=real)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def with_key(objects: list[dict], key: str) -> list[dict]:
    return [o for o in objects if (o["metadata"].get("annotations") or {}).get(naming.KEY_ANNOTATION) == key]


# ---------------------------------------------------------------- the example specs run unchanged


def test_the_example_training_specs_submit_unchanged_and_succeed(cluster, tmp_path):
    backend = cluster.backend(tmp_path)
    run = unique("example")

    async def one(path: Path, params):
        spec = load_spec(path, params=params)
        submission = await asyncio.to_thread(submit_or_adopt, backend, spec, f"{run}/{path.parent.name}/{path.name}")
        return path.name, await wait_for(backend, submission.handle, deadline=time.time() + 120)

    async def all_of_them():
        return await asyncio.gather(*(one(p, params) for p, params in TRAINING_EXAMPLES.items()))

    results = asyncio.run(all_of_them())
    assert [(name, s.state, s.message) for name, s in results if s.state is not State.SUCCEEDED] == []


# ---------------------------------------------------------------- a killed waiter's successor adopts


def waiter_command(cluster: TestCluster, tmp_path: Path, spec: Path, key: str) -> tuple[list[str], dict[str, str]]:
    """The CLI waiting on a training job under `key`, and its environment (no MLflow)."""
    command = [
        sys.executable, "-m", "shared.cli", "run", "training-job", "--spec", str(spec),
        "--backend", "kubernetes", "--kubeconfig", str(cluster.kubeconfig(tmp_path)), "--key", key,
        "--output", "json",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return command, env


def kill_once_it_created_its_job(
    cluster: TestCluster, tmp_path: Path, command: list[str], env: dict[str, str], key: str
) -> None:
    """Start the waiter and SIGKILL it as soon as its PyTorchJob exists: no chance to cancel it."""
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        wait_until(lambda: with_key(cluster.objects("pytorchjobs", tmp_path), key) or first.poll() is not None,
                   timeout=60, what="the first waiter creates its PyTorchJob")
        assert first.poll() is None, first.stderr.read().decode()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        first.stderr.close()


def test_a_waiting_process_killed_and_restarted_adopts_its_object(cluster, tmp_path):
    key = unique("nightly/train")
    doc = cluster.training_manifest(SPECS / "pytorch-mnist.yaml", seconds=5, name=unique("adopt"))
    spec = cluster.write(doc, tmp_path, "adopt")
    command, env = waiter_command(cluster, tmp_path, spec, key)
    kill_once_it_created_its_job(cluster, tmp_path, command, env, key)
    assert len(with_key(cluster.objects("pytorchjobs", tmp_path), key)) == 1

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["adopted"] is True and result["state"] == "SUCCEEDED"
    assert "adopted PyTorchJob" in second.stderr
    assert len(with_key(cluster.objects("pytorchjobs", tmp_path), key)) == 1


# ---------------------------------------------------------------- a success removed by its TTL stays a success


def ttl_manifest(cluster: TestCluster, seconds: float) -> dict:
    doc = cluster.training_manifest(SPECS / "pytorch-mnist.yaml", seconds=seconds, name=unique("ttl"))
    doc["spec"]["runPolicy"]["ttlSecondsAfterFinished"] = 1
    return doc


def created_since(cluster: TestCluster, tmp_path: Path, rv: str, key: str) -> list[str]:
    """The names of every PyTorchJob of `key` created since resourceVersion `rv`, read back from the
    API server's own event history (a watch from `rv`): objects deleted since are counted too."""
    from kubernetes import client, watch

    api = client.CustomObjectsApi(cluster.api_client(tmp_path))
    stream = watch.Watch().stream(
        api.list_namespaced_custom_object, "kubeflow.org", "v1", cluster.namespace, "pytorchjobs",
        label_selector=f"{naming.KEY_HASH_LABEL}={naming.key_hash(key)}", resource_version=rv, timeout_seconds=2,
    )  # fmt: skip
    return [e["object"]["metadata"]["name"] for e in stream if e["type"] == "ADDED"]


def pytorchjobs_rv(cluster: TestCluster, tmp_path: Path) -> str:
    from kubernetes import client

    api = client.CustomObjectsApi(cluster.api_client(tmp_path))
    return api.list_namespaced_custom_object("kubeflow.org", "v1", cluster.namespace, "pytorchjobs",
                                             limit=1)["metadata"]["resourceVersion"]


def outcome_record(cluster: TestCluster, tmp_path: Path, name: str) -> dict | None:
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    core = client.CoreV1Api(cluster.api_client(tmp_path))
    try:
        return core.read_namespaced_config_map(f"kubeflow-tasks-outcome-pytorchjobs-{name}", cluster.namespace).data
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def test_a_success_its_ttl_removed_while_nobody_waited_is_adopted_by_the_retry(cluster, tmp_path):
    """The waiter is killed, the job succeeds and its TTL deletes it: the retry must not train again."""
    key = unique("nightly/ttl")
    spec = cluster.write(ttl_manifest(cluster, seconds=3), tmp_path, "ttl")
    command, env = waiter_command(cluster, tmp_path, spec, key)
    rv = pytorchjobs_rv(cluster, tmp_path)
    kill_once_it_created_its_job(cluster, tmp_path, command, env, key)
    (job,) = with_key(cluster.objects("pytorchjobs", tmp_path), key)
    name = job["metadata"]["name"]

    def removed_by_ttl() -> dict | None:  # the operator's delete: held, readable, by our finalizer
        mine = with_key(cluster.objects("pytorchjobs", tmp_path), key)
        return mine[0] if mine and mine[0]["metadata"].get("deletionTimestamp") else None

    held = wait_until(removed_by_ttl, timeout=90, what="the job to succeed and its TTL to delete it")
    assert "kubeflow-tasks.dev/keep-outcome" in held["metadata"]["finalizers"]
    assert any(c["type"] == "Succeeded" and c["status"] == "True" for c in held["status"]["conditions"])

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert (result["adopted"], result["state"], result["id"]) == (True, "SUCCEEDED", f"{cluster.namespace}/pytorchjobs/{name}")
    wait_until(lambda: not with_key(cluster.objects("pytorchjobs", tmp_path), key), timeout=30,
               what="the TTL deletion to finish once the retry recorded the outcome")
    record = outcome_record(cluster, tmp_path, name)
    assert record and json.loads(record["status"])["state"] == "SUCCEEDED" and record["uid"] == job["metadata"]["uid"]

    third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert third.returncode == 0, third.stderr  # the object is gone now: the record answers
    assert (json.loads(third.stdout)["adopted"], json.loads(third.stdout)["state"]) == (True, "SUCCEEDED")
    assert created_since(cluster, tmp_path, rv, key) == [name]  # one job ever


def test_a_waiter_that_sees_the_end_lets_the_ttl_deletion_finish(cluster, tmp_path):
    backend = cluster.backend(tmp_path)
    key = unique("ttl/plain")
    submission = submit_or_adopt(backend, load_spec(ttl_manifest(cluster, seconds=1)), key)
    name = submission.handle.name
    (job,) = with_key(cluster.objects("pytorchjobs", tmp_path), key)
    assert "kubeflow-tasks.dev/keep-outcome" in job["metadata"]["finalizers"]

    status = asyncio.run(wait_for(backend, submission.handle, deadline=time.time() + 120))
    assert status.state is State.SUCCEEDED
    wait_until(lambda: not with_key(cluster.objects("pytorchjobs", tmp_path), key), timeout=30,
               what="the TTL deletion to finish")
    assert json.loads(outcome_record(cluster, tmp_path, name)["status"])["state"] == "SUCCEEDED"
    assert cluster.backend(tmp_path).status(submission.handle).state is State.SUCCEEDED


def test_a_cancelled_ttl_job_is_deleted_and_not_recorded(cluster, tmp_path):
    backend = cluster.backend(tmp_path)
    doc = ttl_manifest(cluster, seconds=1)
    doc = cluster.training_manifest(doc, hang=True)
    key = unique("ttl/cancel")
    submission = submit_or_adopt(backend, load_spec(doc), key)
    wait_until(lambda: backend.status(submission.handle).state is State.RUNNING, timeout=60, what="the job runs")
    assert backend.cancel(submission.handle).state is State.CANCELLED
    assert not with_key(cluster.objects("pytorchjobs", tmp_path), key)
    assert outcome_record(cluster, tmp_path, submission.handle.name) is None


def test_an_object_being_deleted_may_lose_finalizers_but_never_gain_one(cluster, tmp_path):
    """What the outcome records rely on, the same on the double as on the real API server."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = client.CustomObjectsApi(cluster.api_client(tmp_path))
    doc = cluster.training_manifest(SPECS / "pytorch-mnist.yaml", hang=True, name=unique("held"))
    doc["metadata"]["finalizers"] = ["kubeflow-tasks.test/hold"]
    args = ("kubeflow.org", "v1", cluster.namespace, "pytorchjobs", doc["metadata"]["name"])
    api.create_namespaced_custom_object(*args[:4], doc)
    api.delete_namespaced_custom_object(*args)  # a plain delete, as the operator's TTL cleanup sends
    held = api.get_namespaced_custom_object(*args)
    assert held["metadata"]["deletionTimestamp"] and held["metadata"]["finalizers"] == ["kubeflow-tasks.test/hold"]

    with pytest.raises(ApiException) as refused:
        api.patch_namespaced_custom_object(*args, {"metadata": {"finalizers": ["kubeflow-tasks.test/hold", "x.dev/y"]}})
    assert refused.value.status == 422 and "no new finalizers" in json.loads(refused.value.body)["message"]

    api.patch_namespaced_custom_object(*args, {"metadata": {"finalizers": []}})
    wait_until(lambda: all(o["metadata"]["name"] != args[-1] for o in cluster.objects("pytorchjobs", tmp_path)),
               timeout=30, what="the object to go with its last finalizer")


# ---------------------------------------------------------------- a passing deadline deletes the job


@pytest.mark.parametrize("source", ["pytorch-mnist.yaml", "tfjob-dist.yaml"])
def test_a_passing_deadline_deletes_the_job_within_5s(cluster, tmp_path, source):
    backend = cluster.backend(tmp_path)
    doc = cluster.training_manifest(SPECS / source, hang=True, name=unique("hang"))
    spec = load_spec(doc)
    plural = PLURALS[doc["kind"]]
    submission = submit_or_adopt(backend, spec, unique("deadline"))
    wait_until(lambda: backend.status(submission.handle).state is State.RUNNING, timeout=60,
               what="the job runs")
    deadline = time.time() + 1.0
    passed_at = time.monotonic() + 1.0
    with pytest.raises(DeadlineExceeded) as caught:
        asyncio.run(wait_for(backend, submission.handle, deadline=deadline))
    assert caught.value.status.state is State.CANCELLED
    name = submission.handle.id.rsplit("/", 1)[-1]

    def deleting() -> bool:  # gone, or held by its foregroundDeletion finalizer while its pods go
        mine = [o for o in cluster.objects(plural, tmp_path) if o["metadata"]["name"] == name]
        return not mine or bool(mine[0]["metadata"].get("deletionTimestamp"))

    wait_until(deleting, timeout=40, what="the job is being deleted")
    # Within 5 s on both. (The real stack's first cancel once took 5-24 s: its garbage collector did
    # not watch PyTorchJobs yet, see tests/realstack/README.md.)
    assert time.monotonic() - passed_at < 5.0
    # A real API server keeps a foreground-deleted job until the garbage collector has removed its pods.
    wait_until(lambda: all(o["metadata"]["name"] != name for o in cluster.objects(plural, tmp_path)),
               timeout=30, what="the job is gone")


# ---------------------------------------------------------------- refused before anything is sent

TRAINING_INVALID = {k: v for k, v in INVALID.items() if not k.startswith("katib:")}


@pytest.mark.parametrize("file,edits,field", TRAINING_INVALID.values(), ids=TRAINING_INVALID.keys())
def test_a_job_the_cluster_refuses_is_refused_first_naming_the_field_the_cluster_names(
    cluster, tmp_path, file, edits, field
):
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    manifest = yaml.safe_load((SPECS / file).read_text())
    manifest["metadata"]["namespace"] = cluster.namespace
    manifest["metadata"]["name"] = unique("invalid")
    for path, value in edits:
        target = manifest
        for step in path[:-1]:
            target = target[step]
        if value is DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value

    with pytest.raises(SpecError) as ours:
        load_spec(manifest)  # what every adapter does before it hands the spec to a backend
    assert ours.value.path == field, ours.value

    group, version = manifest["apiVersion"].split("/")
    api = client.CustomObjectsApi(cluster.api_client(tmp_path))
    with pytest.raises(ApiException) as theirs:
        api.create_namespaced_custom_object(group, version, cluster.namespace, PLURALS[manifest["kind"]], manifest)
    body = json.loads(theirs.value.body)
    assert theirs.value.status in (400, 403, 422), body
    assert field_named(body) == field, (field, body)
    assert all(o["metadata"]["name"] != manifest["metadata"]["name"]
               for o in cluster.objects(PLURALS[manifest["kind"]], tmp_path))


# ---------------------------------------------------------------- a key holds one kind of work


def backend_with_kfp(cluster: TestCluster, kfp_double, tmp_path):
    """The cluster's backend with KFP: the double's for both (the real stack has no KFP), so on the
    real stack custom resources are the real API server's and runs the double's."""
    from shared.backends.kubernetes import KubernetesBackend

    return KubernetesBackend(kubeconfig=str(cluster.kubeconfig(tmp_path)), kfp_host=kfp_double.kfp_url,
                             kfp_token=kfp_double.kfp_token, kfp_poll_interval=0.2)


def pipeline_run(name: str) -> dict:
    return {"apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": name},
            "spec": {"pipeline": str(SPECS / "pipelines" / "add.yaml"), "parameters": {"a": 1, "b": 2}}}


def experiment(cluster: TestCluster, name: str) -> dict:
    doc = yaml.safe_load((SPECS / "katib-random.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": cluster.namespace}
    return doc


def test_a_key_holding_a_training_job_refuses_an_experiment_and_a_pipeline_run(cluster, k8s_double, tmp_path):
    """Before: each kind looked only at its own resources, so both were submitted beside the job.
    On the real stack there is no Katib: the experiments list is a 404, the refusal still comes."""
    k8s_double.set_behaviour(kfp_run_seconds=60)
    backend = backend_with_kfp(cluster, k8s_double, tmp_path)
    key = unique("one-kind")
    job = submit_or_adopt(backend, load_spec(cluster.training_manifest(
        SPECS / "pytorch-mnist.yaml", hang=True, name=unique("holder"))), key)
    try:
        for other in (experiment(cluster, unique("exp")), pipeline_run(unique("run"))):
            with pytest.raises(KeyConflict, match=f"held by PyTorchJob {job.handle.id}") as refused:
                submit_or_adopt(backend, load_spec(other), key)
            assert len(str(refused.value).splitlines()) == 1
        assert k8s_double.runs() == []
        if cluster.kind == "double":
            assert k8s_double.objects("experiments") == []
        assert len(with_key(cluster.objects("pytorchjobs", tmp_path), key)) == 1
    finally:
        backend.cancel(job.handle)


def test_a_key_holding_a_pipeline_run_refuses_a_training_job(cluster, k8s_double, tmp_path):
    k8s_double.set_behaviour(kfp_run_seconds=60)
    backend = backend_with_kfp(cluster, k8s_double, tmp_path)
    key = unique("one-kind")
    run = submit_or_adopt(backend, load_spec(pipeline_run(unique("holder"))), key)
    try:
        job = cluster.training_manifest(SPECS / "tfjob-dist.yaml", seconds=1, name=unique("second"))
        with pytest.raises(KeyConflict, match=f"held by PipelineRun {run.handle.id}"):
            submit_or_adopt(backend, load_spec(job), key)
        assert with_key(cluster.objects("tfjobs", tmp_path), key) == []
        assert len(k8s_double.runs()) == 1
    finally:
        backend.cancel(run.handle)


def test_a_kind_the_cluster_does_not_serve_or_hides_from_us_holds_nothing(cluster, k8s_double, tmp_path):
    """No Katib (404 on its list) or no grant to list it (403): a training job under a fresh key is
    still submitted, and found again by key; a 403 on the task's own kind stays an error. The real
    stack has no Katib; on the double its absence and RBAC's denial are switched on."""
    from kubernetes.client.exceptions import ApiException

    from shared.errors import ApiError

    if cluster.kind == "real":
        from kubernetes import client

        with pytest.raises(ApiException) as absent:  # what makes this the no-Katib case
            client.CustomObjectsApi(cluster.api_client(tmp_path)).list_namespaced_custom_object(
                "kubeflow.org", "v1beta1", cluster.namespace, "experiments")
        assert absent.value.status == 404
    backend = backend_with_kfp(cluster, k8s_double, tmp_path)
    spec = load_spec(cluster.training_manifest(SPECS / "pytorch-mnist.yaml", seconds=1, name=unique("fresh")))
    denials = [{"absent": {"experiments"}}, {"forbidden": {"experiments"}}] if cluster.kind == "double" else [{}]
    for denial in denials:
        if denial:
            k8s_double.set_behaviour(**{"absent": set(), "forbidden": set(), **denial})
        key = unique("fresh")
        submission = submit_or_adopt(backend, spec, key)
        assert not submission.adopted and submission.handle.resource == "PyTorchJob", denial
        assert backend.find(key).id == submission.handle.id  # a lookup by key skips that kind too
        assert submission.handle.id in {h.id for h in backend.list()}
        assert submit_or_adopt(backend, spec, key).adopted
        backend.cancel(submission.handle)
    if cluster.kind == "double":
        k8s_double.set_behaviour(absent=set(), forbidden={"pytorchjobs"})
        with pytest.raises(ApiError, match="403"):
            submit_or_adopt(backend, spec, unique("own-kind"))
