"""What only the real stack can show: the real training operator's conditions, faults in front of
the real API server, and 410 Gone after a real etcd compaction (issue 8).

kwok plays the pods (tests/realstack/kwok-stages.yaml): a pod runs for its template annotation
`kubeflow-tasks.test/duration-seconds` and ends with `kubeflow-tasks.test/exit-code`; a failing
container under OnFailure restarts in place, as a kubelet restarts it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.backends.kubernetes import KubernetesBackend, naming
from shared.errors import SpecError
from shared.operations import submit_or_adopt, wait_for
from shared.specs import load_spec
from shared.status import State
from tests.clusters import PLURALS, TestCluster
from tests.realstack import cluster as real_cluster
from tests.realstack.fault_proxy import FaultProxy
from tests.waiting import wait_until

pytestmark = [pytest.mark.real, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "tests" / "data" / "specs"


def single_replica(kind: str, name: str, restart_policy: str = "OnFailure", backoff_limit: int | None = None,
                   seconds: int = 1, exit_code: int = 0) -> dict:
    """A one-pod PyTorchJob (Master) or TFJob (Worker): the operator's rules, no more pods than needed."""
    replica, container, field = {"PyTorchJob": ("Master", "pytorch", "pytorchReplicaSpecs"),
                                 "TFJob": ("Worker", "tensorflow", "tfReplicaSpecs")}[kind]
    run_policy: dict = {"cleanPodPolicy": "None"}
    if backoff_limit is not None:
        run_policy["backoffLimit"] = backoff_limit
    return {
        "apiVersion": "kubeflow.org/v1", "kind": kind, "metadata": {"name": name},
        "spec": {"runPolicy": run_policy, field: {replica: {
            "replicas": 1, "restartPolicy": restart_policy,
            "template": {
                "metadata": {"annotations": {"kubeflow-tasks.test/duration-seconds": str(seconds),
                                             "kubeflow-tasks.test/exit-code": str(exit_code)}},
                "spec": {"containers": [{"name": container, "image": "busybox", "command": ["true"]}]}},
        }}},
    }


@pytest.fixture
def real(real_kubernetes) -> TestCluster:
    return TestCluster("real", namespace=real_kubernetes.namespace, kubeconfig_path=real_kubernetes.kubeconfig,
                       real=real_kubernetes)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def conditions(real: TestCluster, tmp_path: Path, plural: str, name: str) -> list[tuple[str, str]]:
    from kubernetes import client

    obj = client.CustomObjectsApi(real.api_client(tmp_path)).get_namespaced_custom_object(
        "kubeflow.org", "v1", real.namespace, plural, name)
    return [(c["type"], c["status"]) for c in (obj.get("status") or {}).get("conditions", [])]


def record_states(backend, handle, seen: list, until: float):
    """Our own status reads while the job runs, as a waiter sees them."""
    async def watch():
        async def note(status):
            seen.append((status.state, status.raw_state))
        return await wait_for(backend, handle, deadline=until, on_status=note)
    return asyncio.run(watch())


# ---------------------------------------------------------------- the real operator's conditions


def test_exitcode_policy_retryable_failure_restarts_the_pod_and_the_wait_goes_on(real, tmp_path):
    """ExitCode with 137 (retryable): the operator deletes the pod, says Restarting, makes a new one.
    The waiter keeps waiting through Restarting and ends with the job's success."""
    from kubernetes import client

    doc = single_replica("PyTorchJob", unique("exitcode"), restart_policy="ExitCode", seconds=2, exit_code=137)
    doc["metadata"]["namespace"] = real.namespace
    backend = real.backend(tmp_path)
    key = unique("restart")
    submission = submit_or_adopt(backend, load_spec(doc), key)
    name = submission.handle.id.rsplit("/", 1)[-1]
    api = client.CustomObjectsApi(real.api_client(tmp_path))
    core = client.CoreV1Api(real.api_client(tmp_path))
    wait_until(lambda: ("Restarting", "True") in conditions(real, tmp_path, "pytorchjobs", name), timeout=60,
               what="the operator restarts the failed pod")
    assert backend.status(submission.handle).state is State.RUNNING  # a restart is not an end
    # From now on the replica succeeds: the template for new pods, and any pod already made from it.
    patch = {"spec": {"pytorchReplicaSpecs": {"Master": {"template": {"metadata": {"annotations": {
        "kubeflow-tasks.test/exit-code": "0"}}}}}}}
    api.patch_namespaced_custom_object("kubeflow.org", "v1", real.namespace, "pytorchjobs", name, patch)
    for pod in core.list_namespaced_pod(real.namespace, label_selector=f"training.kubeflow.org/job-name={name}").items:
        core.patch_namespaced_pod(pod.metadata.name, real.namespace,
                                  {"metadata": {"annotations": {"kubeflow-tasks.test/exit-code": "0"}}})
    seen: list = []
    status = record_states(backend, submission.handle, seen, until=time.time() + 90)
    assert status.state is State.SUCCEEDED, status
    assert all(state in (State.PENDING, State.RUNNING) for state, _ in seen[:-1]), seen
    mine = [o for o in real.objects("pytorchjobs", tmp_path)
            if (o["metadata"].get("annotations") or {}).get(naming.KEY_ANNOTATION) == key]
    assert len(mine) == 1  # restarts happen inside the one job: no new attempt of ours


def test_onfailure_restarts_in_place_count_against_backoff_limit_then_failed(real, tmp_path):
    """OnFailure: the kubelet restarts the container in place; once restarts reach backoffLimit the
    operator fails the job, and our wait ends FAILED with the operator's reason."""
    doc = single_replica("PyTorchJob", unique("backoff"), restart_policy="OnFailure", backoff_limit=2, seconds=1,
                         exit_code=1)
    doc["metadata"]["namespace"] = real.namespace
    backend = real.backend(tmp_path)
    submission = submit_or_adopt(backend, load_spec(doc), unique("backoff"))
    status = asyncio.run(wait_for(backend, submission.handle, deadline=time.time() + 90))
    assert status.state is State.FAILED, status
    assert "backoff" in (status.message or "").lower() or "BackoffLimitExceeded" in (status.raw_state or ""), status
    assert ("Failed", "True") in conditions(real, tmp_path, "pytorchjobs", submission.handle.id.rsplit("/", 1)[-1])


def test_a_job_created_suspended_and_resumed_later_is_waited_for_not_ended(real, tmp_path):
    """As Kueue does: the job is created with runPolicy.suspend and admitted (resumed) 5 s later. The
    operator reports Suspended meanwhile; the wait must go on, and no second job is made."""
    from kubernetes import client

    key = unique("queued")
    doc = single_replica("PyTorchJob", unique("suspended"), seconds=1)
    doc["metadata"]["namespace"] = real.namespace
    doc["spec"]["runPolicy"]["suspend"] = True
    backend = real.backend(tmp_path)
    submission = submit_or_adopt(backend, load_spec(doc), key)
    name = submission.handle.id.rsplit("/", 1)[-1]
    wait_until(lambda: ("Suspended", "True") in conditions(real, tmp_path, "pytorchjobs", name), timeout=30,
               what="the operator reports the job Suspended")

    def admit() -> None:
        time.sleep(5)  # the admission delay under test, not a synchronisation
        client.CustomObjectsApi(real.api_client(tmp_path)).patch_namespaced_custom_object(
            "kubeflow.org", "v1", real.namespace, "pytorchjobs", name, {"spec": {"runPolicy": {"suspend": False}}})

    with ThreadPoolExecutor(1) as pool:
        admitted = pool.submit(admit)
        status = asyncio.run(wait_for(backend, submission.handle, deadline=time.time() + 90))
        admitted.result()
    assert status.state is State.SUCCEEDED, status
    mine = [o for o in real.objects("pytorchjobs", tmp_path)
            if (o["metadata"].get("annotations") or {}).get(naming.KEY_ANNOTATION) == key]
    assert len(mine) == 1


# ---------------------------------------------------------------- faults in front of the real server


def test_fifty_submissions_per_kind_under_20_percent_faults_end_with_one_object_each(real, tmp_path):
    proxy = FaultProxy(real.real.server, real.real.ca).start()
    try:
        kubeconfig = proxy.write_kubeconfig(real.kubeconfig_path, tmp_path / "proxied")
        backend = KubernetesBackend(kubeconfig=str(kubeconfig))
        run = uuid.uuid4().hex[:6]
        work = [(kind, i) for kind in ("PyTorchJob", "TFJob") for i in range(50)]
        specs = {}
        for kind, i in work:
            doc = single_replica(kind, f"f{run}-{kind.lower()}-{i}", seconds=1)
            doc["metadata"]["namespace"] = real.namespace
            specs[kind, i] = load_spec(doc)
        proxy.faults.configure(rate=0.2, seed=11)
        proxy.faults.inject("watch-cut", count=3, path_contains="watch=")
        proxy.faults.inject("410", count=3, path_contains="watch=")

        async def one(kind: str, i: int):
            key = f"faults/{run}/{kind}/{i}"
            submission = await asyncio.to_thread(submit_or_adopt, backend, specs[kind, i], key)
            return key, kind, await wait_for(backend, submission.handle, deadline=time.time() + 300)

        async def all_of_them():
            asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(32))
            return await asyncio.gather(*(one(kind, i) for kind, i in work))

        results = asyncio.run(all_of_them())
        proxy.faults.configure(rate=0.0)
    finally:
        proxy.stop()
    kinds_served = {kind for kind, _, _ in proxy.faults.injected}
    assert kinds_served >= {"500", "503", "429", "reset", "watch-cut", "410"}, kinds_served
    assert [(key, s.state, s.message) for key, _, s in results if s.state is not State.SUCCEEDED] == []
    for kind in ("PyTorchJob", "TFJob"):
        counts: dict[str, int] = {}
        for obj in real.objects(PLURALS[kind], tmp_path):
            key = (obj["metadata"].get("annotations") or {}).get(naming.KEY_ANNOTATION, "")
            if key.startswith(f"faults/{run}/{kind}/"):
                counts[key] = counts.get(key, 0) + 1
        assert len(counts) == 50 and set(counts.values()) == {1}, (kind, counts)


def test_an_etcd_compaction_makes_resuming_watches_410_and_every_waiter_relists_and_finishes(real, tmp_path):
    """Waiters watch through the proxy; etcd is compacted and the API server restarted. Their resume from
    the old resourceVersion meets the real 410 Gone (the new watch cache starts at etcd's current
    revision; etcd has forgotten the rest), they relist, and all of them still see their job succeed."""
    proxy = FaultProxy(real.real.server, real.real.ca).start()
    try:
        kubeconfig = proxy.write_kubeconfig(real.kubeconfig_path, tmp_path / "proxied")
        backend = KubernetesBackend(kubeconfig=str(kubeconfig))
        run = uuid.uuid4().hex[:6]
        docs = []
        for i in range(10):
            doc = single_replica("PyTorchJob", f"c{run}-{i}", seconds=8)
            doc["metadata"]["namespace"] = real.namespace
            docs.append(load_spec(doc))
        submissions = [submit_or_adopt(backend, spec, f"compact/{run}/{i}") for i, spec in enumerate(docs)]

        async def waiters():
            return await asyncio.gather(*(wait_for(backend, s.handle, deadline=time.time() + 120)
                                          for s in submissions))

        lists_before = 0

        def compact_and_cut() -> None:
            nonlocal lists_before
            wait_until(lambda: any("watch=" in p for _, p, _ in proxy.request_log), timeout=30,
                       what="the waiters watch")
            lists_before = sum(1 for m, p, _ in proxy.request_log if m == "GET" and "pytorchjobs" in p
                               and "watch=" not in p)
            # etcd forgets the history; the API server restarts, so its watch cache starts anew at the
            # current revision and the waiters' watches break.
            real_cluster.compact_etcd(real.real.etcd)
            real_cluster.restart_apiserver(real.real.state)

        with ThreadPoolExecutor(1) as pool:
            cutter = pool.submit(compact_and_cut)
            statuses = asyncio.run(waiters())
            cutter.result()
    finally:
        proxy.stop()
    assert [s.state for s in statuses] == [State.SUCCEEDED] * 10, statuses
    lists_after = sum(1 for m, p, _ in proxy.request_log if m == "GET" and "pytorchjobs" in p and "watch=" not in p)
    assert lists_after > lists_before  # they relisted


# ---------------------------------------------------------------- the server judges before anything is made


def test_a_manifest_the_real_server_refuses_but_we_pass_is_refused_with_its_field_and_nothing_is_made(
    real, tmp_path
):
    """A cluster policy our own validation knows nothing about (a real ValidatingAdmissionPolicy: every
    training job needs a team label) refuses the server-side dry run: one field error, no object. The
    real webhook's refusals reach us the same way (its field is only in its message)."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = real.api_client(tmp_path)
    marker = unique("policy")
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": marker},
        "spec": {"failurePolicy": "Fail",
                 "matchConstraints": {"resourceRules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                                                         "operations": ["CREATE"], "resources": ["pytorchjobs"]}]},
                 "validations": [{"expression": "has(object.metadata.labels) && 'team' in object.metadata.labels",
                                  "message": "every job needs a team label", "fieldPath": "metadata.labels.team",
                                  "reason": "Invalid"}]},
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": marker},
        "spec": {"policyName": marker, "validationActions": ["Deny"],
                 "matchResources": {"objectSelector": {"matchLabels": {"kubeflow-tasks.test/policy": marker}}}},
    }
    admission = client.AdmissionregistrationV1Api(api)
    admission.create_validating_admission_policy(policy)
    admission.create_validating_admission_policy_binding(binding)
    try:
        doc = single_replica("PyTorchJob", unique("teamless"))
        doc["metadata"].update(namespace=real.namespace, labels={"kubeflow-tasks.test/policy": marker})
        spec = load_spec(doc)  # our validation passes it
        custom = client.CustomObjectsApi(api)

        def enforced() -> bool:  # the policy is live once the server's informers have it
            try:
                custom.create_namespaced_custom_object("kubeflow.org", "v1", real.namespace, "pytorchjobs", doc,
                                                       dry_run="All")
            except ApiException as exc:
                return exc.status == 422
            return False

        wait_until(enforced, timeout=30, what="the admission policy is enforced", interval=0.2)
        backend = real.backend(tmp_path)
        key = unique("dry")
        with pytest.raises(SpecError) as caught:
            submit_or_adopt(backend, spec, key)
        # The real server names no field for a policy's denial (its fieldPath is not in the causes):
        # the one line carries the policy's own message.
        assert "every job needs a team label" in str(caught.value) and marker in str(caught.value), caught.value
        assert "\n" not in str(caught.value)
        assert [o for o in real.objects("pytorchjobs", tmp_path)
                if (o["metadata"].get("annotations") or {}).get(naming.KEY_ANNOTATION) == key] == []

        # The training operator's own webhook: a rule our spec layer has too, sent as if it had not.
        bad = single_replica("PyTorchJob", unique("twomasters"))
        bad["metadata"]["namespace"] = real.namespace
        good = load_spec(bad)
        bad["spec"]["pytorchReplicaSpecs"]["Master"]["replicas"] = 2
        forged = dataclasses.replace(good, manifest=bad)
        with pytest.raises(SpecError) as webhook:
            submit_or_adopt(backend, forged, unique("dry"))
        assert webhook.value.path == "spec.pytorchReplicaSpecs[Master].replicas", webhook.value
    finally:
        admission.delete_validating_admission_policy_binding(marker)
        admission.delete_validating_admission_policy(marker)
