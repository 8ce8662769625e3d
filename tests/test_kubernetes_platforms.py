"""The Kubernetes backend on the platforms users run (issue 9): Kueue, multi-user KFP, server-side
dry run and deadlines, one retry layer, bounded cancels, adoption.

Real `kubernetes` and `kfp_server_api` clients talk HTTP to the wire-level double on loopback
(tests/k8s_double), which plays the API server, the training operator, Kueue and KFP.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from waiting import wait_until

from shared.backends.base import SubmitContext
from shared.backends.kubernetes import KubernetesBackend, manifests, naming, states
from shared.errors import ApiError, BackendError, SpecError
from shared.keys import key_digest
from shared.mlflow_handoff import KEY_HASH_TAG
from shared.operations import run_async, submit_or_adopt
from shared.retry import ATTEMPTS
from shared.specs import load_spec
from shared.status import Kind, State

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "tests" / "data" / "specs"
OUTCOME = "double.kubeflow-tasks.dev/outcome"
RUN_SECONDS = "double.kubeflow-tasks.dev/run-seconds"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"

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


def manifest(tmp_path: Path, name: str, source: str = "pytorch-mnist.yaml", **changes: Any) -> Path:
    """A copy of a test manifest with another name and `labels`/`annotations`/`run_policy` merged in."""
    doc = yaml.safe_load((SPECS / source).read_text())
    doc["metadata"] = {"name": name, "labels": changes.get("labels", {}), "annotations": changes.get("annotations", {})}
    if "run_policy" in changes:
        doc["spec"].setdefault("runPolicy", {}).update(changes["run_policy"])
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


# ---------------------------------------------------------------- Kueue: Suspended is pending


def test_a_job_queued_by_kueue_and_admitted_5s_later_succeeds_as_one_object(k8s_double, tmp_path):
    double = k8s_double
    double.set_behaviour(kueue_admit_seconds=5.0)
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "queued", labels={QUEUE_LABEL: "team-q"}, annotations={RUN_SECONDS: "0.2"}))
    seen: list[tuple[State, str, str]] = []

    outcome = asyncio.run(
        run_async(backend, spec, "kueue/queued", timeout=60, on_status=lambda s: seen.append((s.state, s.raw_state, s.message)))
    )

    assert outcome.status.state is State.SUCCEEDED, outcome.status
    assert (State.PENDING, "Suspended") in [(s, r) for s, r, _ in seen]
    assert any(m.startswith("queued/suspended by Kueue (queue team-q)") for _, r, m in seen if r == "Suspended")
    jobs = double.objects("pytorchjobs")
    assert len(jobs) == 1 and outcome.submission.handle.attempt == 1
    events = [what for _, what in double.events_at[f"pytorchjobs/default/{jobs[0]['metadata']['name']}"]]
    assert events.index("Suspended") < events.index("Admitted") < events.index("Succeeded")


def test_a_job_that_stays_suspended_past_the_deadline_is_cancelled(k8s_double, tmp_path):
    double = k8s_double
    double.set_behaviour(kueue_admit_seconds=None)  # never admitted
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "starved", labels={QUEUE_LABEL: "full-q"}))

    outcome = asyncio.run(run_async(backend, spec, "kueue/starved", timeout=2))

    assert outcome.timed_out and outcome.status.state is State.CANCELLED
    assert double.objects("pytorchjobs") == []


# ---------------------------------------------------------------- multi-user KFP


def pipeline_run(tmp_path: Path, name: str, experiment: str | None = None) -> Path:
    doc = yaml.safe_load((SPECS / "pipeline-run.yaml").read_text())
    doc["metadata"] = {"name": name}
    doc["spec"]["pipeline"] = str(SPECS / "pipelines" / "add.yaml")
    doc["spec"].pop("experiment", None)
    if experiment:
        doc["spec"]["experiment"] = experiment
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(doc))
    return out


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        timeout=120,
    )


def test_multi_user_kfp_runs_go_to_the_namespace_default_experiment(k8s_double, tmp_path):
    double = k8s_double
    double.set_behaviour(kfp_multi_user=True)
    double.kfp.namespace_access = {"alice-token": {"team-a"}}
    backend = KubernetesBackend(kfp_host=double.kfp_url, kfp_token="alice-token", namespace="team-a", kfp_poll_interval=0.2)

    outcome = asyncio.run(run_async(backend, load_spec(pipeline_run(tmp_path, "mu-default")), "mu/default", timeout=60))
    named = asyncio.run(
        run_async(backend, load_spec(pipeline_run(tmp_path, "mu-named", "nightly")), "mu/named", timeout=60)
    )

    assert outcome.status.state is State.SUCCEEDED and named.status.state is State.SUCCEEDED
    by_id = {r["run_id"]: r for r in double.runs()}
    experiments = double.kfp.experiments
    default = experiments[by_id[outcome.submission.handle.id.removeprefix("kfp/")]["experiment_id"]]
    nightly = experiments[by_id[named.submission.handle.id.removeprefix("kfp/")]["experiment_id"]]
    assert (default["display_name"], default["namespace"]) == ("Default", "team-a")
    assert (nightly["display_name"], nightly["namespace"]) == ("nightly", "team-a")
    assert backend.find("mu/default", Kind.PIPELINE).id == outcome.submission.handle.id  # found again within the namespace
    assert double.request_count("GET", "/healthz") <= 1  # asked at most once per client (only when needed)


def test_multi_user_kfp_without_a_namespace_is_one_line_bad_input(k8s_double, tmp_path):
    double = k8s_double
    double.set_behaviour(kfp_multi_user=True)
    token = tmp_path / "token"
    token.write_text(double.kfp_token)
    spec = pipeline_run(tmp_path, "mu-none")
    common = ["run", "pipeline", "--spec", str(spec), "--backend", "kubernetes", "--kfp-host", double.kfp_url,
              "--kfp-token-file", str(token)]

    refused = cli(*common)

    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in refused.stderr, refused.stderr
    assert lines[0].startswith("kubeflow-tasks: error: namespace: ") and "multi-user" in lines[0]
    assert double.runs() == []

    double.kfp.namespace_access = {double.kfp_token: {"team-a"}}
    other = cli(*common, "--kfp-namespace", "team-b")  # the token's profile does not include team-b
    # credentials the server refuses for that namespace are the user's to fix: exit 2 (issue 10's rule)
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr
    assert other.stderr.strip().splitlines()[-1].startswith("kubeflow-tasks: error: ")
    assert "PermissionDenied" in other.stderr and double.runs() == []

    ok = cli(*common, "--kfp-namespace", "team-a", "--output", "json")
    assert ok.returncode == 0, ok.stderr


# ---------------------------------------------------------------- one retry layer


def test_a_failing_api_is_retried_by_one_layer_within_the_deadline(k8s_double, tmp_path):
    double = k8s_double
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "unlucky"))
    double.faults.inject("503", count=1000, path_contains="/pytorchjobs")
    started = time.monotonic()

    with pytest.raises(ApiError) as caught:
        submit_or_adopt(backend, spec, "retry/unlucky", deadline=time.time() + 3)

    elapsed = time.monotonic() - started
    assert elapsed < 4.0  # not minutes: the deadline bounds every retry
    assert double.request_count(path_contains="/pytorchjobs") <= ATTEMPTS  # not 5 x 8 = 40
    assert caught.value.status == 503 and "\n" not in str(caught.value)
    assert double.objects("pytorchjobs") == []


# ---------------------------------------------------------------- cancels that do not finish


def test_a_cancel_not_confirmed_in_time_ends_cleanly_with_the_mlflow_run_killed(k8s_double, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    double = k8s_double
    backend = backend_for(double, tmp_path, cancel_timeout=1.0)
    path = manifest(tmp_path, "stuck", annotations={OUTCOME: "Hang"})
    doc = yaml.safe_load(path.read_text())
    doc["metadata"]["finalizers"] = ["example.com/hold"]  # someone else's finalizer: the delete never ends
    path.write_text(yaml.safe_dump(doc))

    outcome = asyncio.run(run_async(backend, load_spec(path), "cancel/stuck", timeout=1.5, mlflow_tracking_uri=mlflow_server))

    assert outcome.timed_out and not outcome.status.terminal
    assert "cancel requested but not confirmed" in outcome.status.message
    run = MlflowClient(mlflow_server).get_run(outcome.submission.mlflow_run_id)
    assert run.info.status == "KILLED"
    assert "not confirmed" in run.data.tags["kubeflow_tasks.message"]
    (job,) = double.objects("pytorchjobs")
    assert job["metadata"].get("deletionTimestamp")  # the delete was sent; the finalizer holds it


# ---------------------------------------------------------------- server-side dry run


def test_a_manifest_a_webhook_refuses_fails_with_its_field_before_anything_is_opened(k8s_double, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    double = k8s_double
    # A cluster policy our own validation knows nothing about: every training job needs a team label.
    double.kube.policy_webhooks.append(
        lambda plural, obj: None if (obj["metadata"].get("labels") or {}).get("team") else
        ("metadata.labels.team", "Required value: every job needs a team label")
    )
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "teamless"))  # our validation passes it

    with pytest.raises(SpecError) as caught:
        submit_or_adopt(backend, spec, "dry/teamless", mlflow_tracking_uri=mlflow_server)

    assert caught.value.path == "metadata.labels.team" and "team label" in str(caught.value)
    assert double.objects("pytorchjobs") == []
    assert double.request_count("POST", "dryRun=All") == double.request_count("POST", "/pytorchjobs") == 1
    runs = MlflowClient(mlflow_server).search_runs(
        [e.experiment_id for e in MlflowClient(mlflow_server).search_experiments()],
        filter_string=f"tags.`{KEY_HASH_TAG}` = '{key_digest('dry/teamless')}'",
    )
    assert runs == []  # refused before the MLflow run was opened for its key: nothing left RUNNING

    labelled = load_spec(manifest(tmp_path, "teamed", labels={"team": "a"}))
    handle = submit_or_adopt(backend, labelled, "dry/teamed").handle
    assert double.kube.dry_runs == 1 and [o["metadata"]["name"] for o in double.objects("pytorchjobs")] == [handle.name]


# ---------------------------------------------------------------- the deadline on the server


def test_the_deadline_is_mirrored_never_larger_than_the_users_own(tmp_path):
    deadline = time.time() + 100
    job = manifests.build(load_spec(manifest(tmp_path, "plain")), "k", 1, "ns", SubmitContext(deadline=deadline))
    assert 98 <= job["spec"]["runPolicy"]["activeDeadlineSeconds"] <= 100
    own = manifests.build(
        load_spec(manifest(tmp_path, "own", run_policy={"activeDeadlineSeconds": 30})), "k", 1, "ns",
        SubmitContext(deadline=deadline),
    )
    assert own["spec"]["runPolicy"]["activeDeadlineSeconds"] == 30
    experiment = load_spec(REPO / "dags" / "commodity" / "experiment.yaml", params={"data_path": "/d.csv"})
    body = manifests.build(experiment, "k", 1, "ns", SubmitContext(deadline=deadline))
    assert 98 <= body["spec"]["trialTemplate"]["trialSpec"]["spec"]["activeDeadlineSeconds"] <= 100  # a Job trial
    untimed = manifests.build(load_spec(manifest(tmp_path, "untimed")), "k", 1, "ns", SubmitContext())
    assert untimed["spec"]["runPolicy"]["activeDeadlineSeconds"] == 3600  # the manifest's own, untouched


def test_a_job_whose_client_died_still_ends_at_the_deadline(k8s_double, tmp_path):
    double = k8s_double
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "orphan", annotations={OUTCOME: "Hang"}))

    submit_or_adopt(backend, spec, "deadline/orphan", deadline=time.time() + 2)  # and nobody waits for it

    def failed() -> str | None:
        (job,) = double.objects("pytorchjobs")
        cond = next((c for c in (job.get("status") or {}).get("conditions", []) if c["type"] == "Failed"), None)
        return cond and cond["message"]

    assert "active longer than specified deadline" in wait_until(failed, timeout=20, what="the operator's deadline")


# ---------------------------------------------------------------- adoption


def test_a_success_removed_by_ttl_stays_a_success(k8s_double, tmp_path):
    double = k8s_double
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "short-lived", run_policy={"ttlSecondsAfterFinished": 1}))

    outcome = asyncio.run(run_async(backend, spec, "ttl/short-lived", timeout=60))
    assert outcome.status.state is State.SUCCEEDED
    wait_until(lambda: double.objects("pytorchjobs") == [], timeout=20, what="the TTL to remove the job")

    assert backend.status(outcome.submission.handle).state is State.SUCCEEDED  # not "deleted externally"
    gone = {"metadata": {}, "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "PyTorchJobSucceeded"}]}}
    assert states.deleted_status(gone, cancelled=False, plural="pytorchjobs").state is State.SUCCEEDED


def test_an_outcome_that_cannot_be_recorded_keeps_the_job_until_it_can(k8s_double, tmp_path):
    double = k8s_double
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "unrecorded", run_policy={"ttlSecondsAfterFinished": 0}))
    handle = submit_or_adopt(backend, spec, "ttl/unrecorded").handle  # nobody waits

    def held() -> dict[str, Any] | None:
        jobs = double.objects("pytorchjobs")
        return jobs[0] if jobs and jobs[0]["metadata"].get("deletionTimestamp") else None

    wait_until(held, timeout=20, what="the job to succeed and its TTL to delete it")
    double.faults.inject("500", count=ATTEMPTS, path_contains="/configmaps")  # every try of the record's create

    assert backend_for(double, tmp_path).status(handle).state is State.SUCCEEDED
    assert held() and double.objects("configmaps") == []  # not recorded: the finalizer stays, the job readable

    assert backend_for(double, tmp_path).status(handle).state is State.SUCCEEDED  # the next look records it
    wait_until(lambda: double.objects("pytorchjobs") == [], timeout=10, what="the TTL deletion to finish")
    (record,) = double.objects("configmaps")
    assert json.loads(record["data"]["status"])["state"] == "SUCCEEDED"
    again = submit_or_adopt(backend_for(double, tmp_path), spec, "ttl/unrecorded")
    assert (again.adopted, again.handle.id) == (True, handle.id)


def test_outcome_records_past_their_retention_are_pruned_and_nothing_else(k8s_double, tmp_path):
    from datetime import UTC, datetime, timedelta

    from kubernetes import client, config

    double = k8s_double
    core = client.CoreV1Api(config.new_client_from_config(str(double.write_kubeconfig(tmp_path / "kc"))))
    namespace = "team-prune"  # pruned at most hourly per namespace: one no other test wrote to

    def config_map(name: str, age: timedelta, labelled: bool = True) -> None:
        labels = {"kubeflow-tasks.dev/outcome": "true"} if labelled else {}
        at = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%SZ")
        core.create_namespaced_config_map(namespace, {"apiVersion": "v1", "kind": "ConfigMap",
                                                      "metadata": {"name": name, "labels": labels},
                                                      "data": {"recorded-at": at}})

    config_map("kubeflow-tasks-outcome-pytorchjobs-old-1", timedelta(days=8))
    config_map("kubeflow-tasks-outcome-pytorchjobs-young-1", timedelta(days=6))
    config_map("someone-elses", timedelta(days=30))  # labelled like ours, but not one of our records
    config_map("kubeflow-tasks-outcome-unlabelled", timedelta(days=30), labelled=False)
    spec = load_spec(manifest(tmp_path, "pruning", run_policy={"ttlSecondsAfterFinished": 60}))

    outcome = asyncio.run(run_async(backend_for(double, tmp_path, namespace=namespace), spec, "ttl/prune", timeout=60))

    assert outcome.status.state is State.SUCCEEDED
    assert sorted(c["metadata"]["name"] for c in double.objects("configmaps", namespace)) == sorted([
        "kubeflow-tasks-outcome-pytorchjobs-young-1",
        "kubeflow-tasks-outcome-unlabelled",
        f"kubeflow-tasks-outcome-pytorchjobs-{outcome.submission.handle.name}",
        "someone-elses",
    ])


def test_find_looks_in_the_namespace_the_manifest_names(k8s_double, tmp_path):
    double = k8s_double
    doc = yaml.safe_load(manifest(tmp_path, "elsewhere").read_text())
    doc["metadata"]["namespace"] = "team-z"
    (tmp_path / "elsewhere.yaml").write_text(yaml.safe_dump(doc))
    spec = load_spec(tmp_path / "elsewhere.yaml")
    first = submit_or_adopt(backend_for(double, tmp_path), spec, "ns/elsewhere")

    again = submit_or_adopt(backend_for(double, tmp_path), spec, "ns/elsewhere")  # a new process

    assert again.adopted and again.handle.id == first.handle.id
    assert len(double.objects("pytorchjobs", "team-z")) == 1


def test_object_names_carry_64_bits_of_the_key_and_another_keys_object_is_never_adopted(k8s_double, tmp_path):
    double = k8s_double
    backend = backend_for(double, tmp_path)
    spec = load_spec(manifest(tmp_path, "named"))
    handle = submit_or_adopt(backend, spec, "names/a").handle
    assert naming.key_hash("names/a")[:16] in handle.name
    (obj,) = double.objects("pytorchjobs")
    obj["metadata"]["annotations"][naming.KEY_ANNOTATION] = "names/b"  # as if another key had the name
    with double.store.cond:
        double.store.update("pytorchjobs", obj)
    with pytest.raises(BackendError, match="exists with another key"):
        backend.submit(spec, "names/a", 1, SubmitContext())


# ---------------------------------------------------------------- stuck before running


@pytest.mark.parametrize(
    "outcome,reason",
    [("ImagePullBackOff", "ImagePullBackOff: Back-off pulling image"), ("Unschedulable", "Insufficient nvidia.com/gpu")],
)
def test_a_job_stuck_before_running_says_why_and_the_startup_timeout_fails_it(k8s_double, tmp_path, outcome, reason):
    double = k8s_double
    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
    spec = manifest(tmp_path, f"stuck-{outcome.lower()}", annotations={OUTCOME: outcome})
    started = time.monotonic()

    result = cli("run", "training-job", "--spec", str(spec), "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                 "--startup-timeout", "3s", "--timeout", "2m", "--output", "json")

    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    progress = [line for line in result.stderr.splitlines() if reason in line]
    assert len(progress) >= 2, result.stderr  # the cluster's reason while waiting, and as the outcome
    assert progress[0].startswith("kubeflow-tasks: PENDING (")
    final = json.loads(result.stdout.strip().splitlines()[-1])
    assert final["state"] == "FAILED" and final["raw_state"] == "StartupTimeout"
    assert final["message"].startswith("did not start within 3s: pod ") and reason in final["message"]
    assert time.monotonic() - started < 60
    assert double.objects("pytorchjobs") == []  # cancelled, not left pending


def test_an_unreachable_kfp_server_is_a_one_line_error(tmp_path):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = cli("run", "pipeline", "--spec", str(pipeline_run(tmp_path, "nowhere")), "--backend", "kubernetes",
                 "--kfp-host", f"http://127.0.0.1:{port}", "--namespace", "team-a", "--timeout", "20s")
    # a host still out of reach after the retries is the user's to fix: exit 2 (issue 10's rule)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "cannot reach the server" in result.stderr.strip().splitlines()[-1]
