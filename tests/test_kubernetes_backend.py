"""The Kubernetes backend, piece by piece: names, manifests, the status mapping of reference §6, and
each protocol method against the wire-level double (real `kubernetes` / `kfp_server_api` clients
over HTTP on loopback)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.backends.base import SubmitContext
from shared.backends.kubernetes import manifests, naming, states
from shared.errors import BackendError, SpecError
from shared.specs import load_spec
from shared.status import State

REPO = Path(__file__).resolve().parents[1]
SPECS = REPO / "tests" / "data" / "specs"
COMMODITY = REPO / "dags" / "commodity"


# ---------------------------------------------------------------- names and manifests


def test_import_stays_light():
    code = (
        "import sys, shared.backends, shared.backends.kubernetes as k; k.KubernetesBackend(namespace='a');"
        "print(sorted(m for m in ('kubernetes', 'kfp', 'kfp_server_api', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("kind,limit", [("Experiment", 40), ("PyTorchJob", 63)])
def test_object_names_are_deterministic_dns_1035_within_the_webhook_limit(kind, limit):
    long_name = "9-Very_Long.Name" * 8
    name = naming.object_name(long_name, "dag/task/run/0", 3, naming.MAX_NAME[kind])
    assert naming.DNS_1035.fullmatch(name) and len(name) <= limit
    assert name.endswith(f"-{naming.key_hash('dag/task/run/0')[:16]}-3")  # 64 bits of the key hash
    assert name == naming.object_name(long_name, "dag/task/run/0", 3, naming.MAX_NAME[kind])
    assert name != naming.object_name(long_name, "dag/task/run/1", 3, naming.MAX_NAME[kind])


def test_job_manifest_carries_key_markers_and_handoff_in_every_replica():
    spec = load_spec(SPECS / "tfjob-dist.yaml")
    context = SubmitContext(
        env={"MLFLOW_RUN_ID": "abc", "MLFLOW_TRACKING_URI": "http://m"}, labels={"dag id": "d"}
    )
    body = manifests.build(spec, "k/1", 2, "team", context)
    meta = body["metadata"]
    assert meta["namespace"] == "team" and meta["labels"][naming.KEY_HASH_LABEL] == naming.key_hash("k/1")
    assert meta["annotations"][naming.KEY_ANNOTATION] == "k/1"
    assert meta["annotations"][naming.ATTEMPT_ANNOTATION] == "2"
    assert meta["annotations"]["kubeflow-tasks.dev/dag-id"] == "d"
    replicas = body["spec"]["tfReplicaSpecs"]
    assert replicas
    for replica in replicas.values():
        for container in replica["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container["env"]}
            assert env["MLFLOW_RUN_ID"] == "abc" and env["MLFLOW_TRACKING_URI"] == "http://m"
    assert spec.manifest["metadata"].get("annotations") is None  # the spec itself is untouched


def test_trial_template_gets_a_nested_run_context_not_the_parent_run_id():
    spec = load_spec(COMMODITY / "experiment.yaml", params={"data_path": "/data/p.csv"})
    context = SubmitContext(
        env={"MLFLOW_RUN_ID": "parent", "MLFLOW_TRACKING_URI": "http://m", "MLFLOW_EXPERIMENT_ID": "7"},
        mlflow={"run_id": "parent", "experiment_id": "7", "tracking_uri": "http://m"},
    )
    body = manifests.build(spec, "k", 1, "default", context)
    assert len(body["metadata"]["name"]) <= 40
    container = body["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert "MLFLOW_RUN_ID" not in env
    assert json.loads(env["MLFLOW_RUN_CONTEXT"]) == {"mlflow.parentRunId": "parent"}
    assert env["MLFLOW_EXPERIMENT_ID"] == "7" and env["MLFLOW_TRACKING_URI"] == "http://m"


# ---------------------------------------------------------------- status mapping (reference §6)


def _cond(type_, status="True", at="2026-01-01T00:00:00Z", reason="", message=""):
    return {"type": type_, "status": status, "lastTransitionTime": at, "reason": reason, "message": message}


def test_current_condition_is_the_newest_true_one_not_the_last_entry():
    conditions = [
        _cond("Created", at="2026-01-01T00:00:00Z"),
        _cond("Running", at="2026-01-01T00:01:00Z"),
        _cond("Restarting", "False", at="2026-01-01T00:02:00Z"),  # last written, but False
    ]
    status = states.job_status({"metadata": {}, "status": {"conditions": conditions}})
    assert (status.state, status.raw_state) == (State.RUNNING, "Running")


def test_job_terminal_conditions_win_and_carry_reason_and_message():
    conditions = [
        _cond("Running", "False", at="2026-01-01T00:05:00Z"),
        _cond("Failed", at="2026-01-01T00:04:00Z", reason="PyTorchJobFailed", message="backoff limit"),
    ]
    obj = {"metadata": {}, "status": {"conditions": conditions, "replicaStatuses": {"Master": {"failed": 1}}}}
    status = states.job_status(obj)
    assert status.state is State.FAILED and status.message == "PyTorchJobFailed: backoff limit"
    assert status.outputs["replica_statuses"] == {"Master": {"failed": 1}}
    assert states.job_status({"metadata": {}, "status": {}}).state is State.PENDING


def test_suspended_is_pending_never_terminal_and_says_who_holds_it():
    created = _cond("Created", at="2026-01-01T00:00:00Z")
    suspended = _cond(
        "Suspended", at="2026-01-01T00:00:01Z", reason="PyTorchJobSuspended", message="x is suspended."
    )
    queued = {
        "metadata": {"labels": {"kueue.x-k8s.io/queue-name": "team-q"}},
        "status": {"conditions": [created, suspended]},
    }
    status = states.job_status(queued)
    assert (status.state, status.raw_state, status.terminal) == (State.PENDING, "Suspended", False)
    assert status.message == "queued/suspended by Kueue (queue team-q): PyTorchJobSuspended: x is suspended."
    paused = states.job_status({"metadata": {}, "status": {"conditions": [created, suspended]}})
    assert paused.state is State.PENDING and paused.message.startswith(
        "queued/suspended by spec.runPolicy.suspend"
    )
    resumed = [created, dict(suspended, status="False", at="2026-01-01T00:00:05Z")]
    assert states.job_status({"metadata": {}, "status": {"conditions": resumed}}).state is State.PENDING
    done = [created, dict(suspended, status="False"), _cond("Succeeded", at="2026-01-01T00:00:09Z")]
    assert states.job_status({"metadata": {}, "status": {"conditions": done}}).state is State.SUCCEEDED


def test_experiment_succeeded_without_optimal_trial_is_failed():
    obj = {
        "metadata": {},
        "spec": {"objective": {"type": "minimize", "objectiveMetricName": "rmse"}},
        "status": {"conditions": [_cond("Succeeded", reason="ExperimentMaxTrialsReached")], "trials": 4},
    }
    assert states.experiment_status(obj).state is State.FAILED
    obj["status"]["currentOptimalTrial"] = {
        "bestTrialName": "t-1",
        "parameterAssignments": [{"name": "lr", "value": "0.1"}],
        "observation": {"metrics": [{"name": "rmse", "min": "0.5", "max": "0.9", "latest": "0.7"}]},
    }
    status = states.experiment_status(obj)
    assert status.state is State.SUCCEEDED
    assert status.outputs["best_parameters"] == {"lr": "0.1"} and status.outputs["best_metrics"] == {
        "rmse": 0.5
    }


@pytest.mark.parametrize(
    "raw,state",
    [
        ("PENDING", State.PENDING),
        ("RUNNING", State.RUNNING),
        ("CANCELING", State.RUNNING),
        ("PAUSED", State.RUNNING),
        ("SKIPPED", State.SUCCEEDED),
        ("FAILED", State.FAILED),
        ("CANCELED", State.CANCELLED),
        ("SOMETHING_NEW", State.RUNNING),
    ],
)
def test_kfp_states(raw, state):
    assert states.kfp_status({"run_id": "r", "state": raw}, "u").state is state


def test_a_delete_we_did_not_cause_is_a_failure():
    assert states.deleted_status(None, cancelled=False).state is State.FAILED
    assert states.deleted_status(None, cancelled=True).state is State.CANCELLED
    ours = {"metadata": {"annotations": {naming.CANCELLED_ANNOTATION: "true"}}}
    assert states.deleted_status(ours, cancelled=False).state is State.CANCELLED


def test_namespace_outside_the_allow_list_is_bad_input_before_any_request():
    from shared.backends.kubernetes import KubernetesBackend

    with pytest.raises(SpecError, match="^namespace:"):
        KubernetesBackend(namespace="prod", allowed_namespaces="dev,staging")
    backend = KubernetesBackend(
        host="http://127.0.0.1:9", token="t", namespace="dev", allowed_namespaces=["dev"]
    )
    spec = load_spec(SPECS / "katib-random.yaml")  # metadata.namespace: kubeflow
    with pytest.raises(SpecError, match="^metadata.namespace:"):
        backend.submit(spec, "k", 1, SubmitContext())


# ---------------------------------------------------------------- against the double

OUTCOME = "double.kubeflow-tasks.dev/outcome"
RUN_SECONDS = "double.kubeflow-tasks.dev/run-seconds"


def backend_for(double, tmp_path, **options):
    from shared.backends.kubernetes import KubernetesBackend

    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
    options.setdefault("kfp_token", double.kfp_token)
    return KubernetesBackend(
        kubeconfig=str(kubeconfig), kfp_host=double.kfp_url, kfp_poll_interval=0.2, **options
    )


def job_spec(name="job", annotations=None, path=SPECS / "pytorch-mnist.yaml"):
    import yaml

    doc = yaml.safe_load(path.read_text())
    doc["metadata"] = {"name": name, "annotations": dict(annotations or {})}
    return load_spec(doc)


def run_spec(name="pipe"):
    return load_spec(
        {
            "apiVersion": "kubeflow-tasks/v1",
            "kind": "PipelineRun",
            "metadata": {"name": name},
            "spec": {"pipeline": str(SPECS / "pipelines" / "add.yaml"), "parameters": {"a": 1, "b": 2}},
        }
    )


async def _until_terminal(backend, handles, timeout=30):
    async def follow():
        final = {}
        async for handle, status in backend.watch(handles):
            final[handle.id] = status
        return final

    return await asyncio.wait_for(follow(), timeout)


def test_submit_is_idempotent_per_key_and_attempt_and_find_returns_the_newest(k8s_double, tmp_path):
    backend = backend_for(k8s_double, tmp_path)
    spec = job_spec()
    first = backend.submit(spec, "dag/t/1", 1, SubmitContext())
    again = backend.submit(spec, "dag/t/1", 1, SubmitContext())  # 409 AlreadyExists: adopted
    assert first == again and len(k8s_double.objects("pytorchjobs")) == 1
    second = backend.submit(spec, "dag/t/1", 2, SubmitContext())
    assert backend.find("dag/t/1").id == second.id and backend.find("dag/t/1", spec.kind).attempt == 2
    assert backend.find("dag/t/2") is None
    assert backend.get(first.id) == first
    assert {h.id for h in backend.list()} == {first.id, second.id}


def test_a_name_taken_by_another_key_is_an_error_not_an_adoption(k8s_double, tmp_path):
    from kubernetes import client

    backend = backend_for(k8s_double, tmp_path)
    spec = job_spec()
    body = manifests.build(spec, "someone-else", 1, "default", SubmitContext())
    body["metadata"]["name"] = naming.object_name(spec.name, "mine", 1)
    api = client.CustomObjectsApi(backend.cluster.api_client())
    api.create_namespaced_custom_object("kubeflow.org", "v1", "default", "pytorchjobs", body)
    with pytest.raises(BackendError, match="exists with another key"):
        backend.submit(spec, "mine", 1, SubmitContext())


def test_a_lost_create_answer_is_adopted_not_duplicated(k8s_double, tmp_path):
    backend = backend_for(k8s_double, tmp_path)
    k8s_double.faults.inject("reset-after", path_contains="/pytorchjobs")  # created, then the connection dies
    k8s_double.faults.inject("reset-after", path_contains="/runs")
    job = backend.submit(job_spec(), "lost/job", 1, SubmitContext())
    run = backend.submit(run_spec(), "lost/run", 1, SubmitContext())  # a key holds one kind of work
    assert [i[0] for i in k8s_double.faults.injected] == ["reset-after", "reset-after"]
    assert len(k8s_double.objects("pytorchjobs")) == 1 and len(k8s_double.runs()) == 1
    assert backend.find("lost/job", job.kind) == job and backend.find("lost/run", run.kind) == run


def test_many_waiters_share_one_watch_and_one_poller(k8s_double, tmp_path):
    k8s_double.set_behaviour(job_run_seconds=0.3, kfp_run_seconds=0.3)
    backend = backend_for(k8s_double, tmp_path)
    handles = [backend.submit(job_spec(f"j{i}"), f"share/{i}", 1, SubmitContext()) for i in range(15)]
    handles += [backend.submit(run_spec(f"p{i}"), f"share/{i}", 1, SubmitContext()) for i in range(15)]
    before_gets = k8s_double.request_count("GET")
    before_polls = k8s_double.request_count("GET", "/apis/v2beta1/runs?")

    async def main():
        results = await asyncio.gather(*(_until_terminal(backend, [h]) for h in handles))
        return {k: v for r in results for k, v in r.items()}

    started = time.monotonic()
    final = asyncio.run(main())
    elapsed = time.monotonic() - started
    assert {s.state for s in final.values()} == {State.SUCCEEDED} and len(final) == 30
    assert k8s_double.request_count("GET", "watch=") == 1  # one watch for fifteen waiters
    run_gets = k8s_double.request_count("GET", "/apis/v2beta1/runs/")
    polls = k8s_double.request_count("GET", "/apis/v2beta1/runs?") - before_polls
    # one list request per poll interval (0.2 s +-20%) for all fifteen runs, never a request per run
    assert run_gets == 0 and polls <= elapsed / 0.16 + 2
    assert k8s_double.request_count("GET") - before_gets <= polls + 3


def test_watch_survives_cuts_and_expiry(k8s_double, tmp_path):
    k8s_double.set_behaviour(bookmark_interval=0.05)
    backend = backend_for(k8s_double, tmp_path)
    handle = backend.submit(job_spec("cut", {OUTCOME: "Hang"}), "cut", 1, SubmitContext())
    k8s_double.faults.inject("watch-cut", count=2, path_contains="watch=")
    k8s_double.faults.inject("410", count=1, path_contains="watch=")

    async def main():
        waiter = asyncio.ensure_future(_until_terminal(backend, [handle]))
        deadline = time.monotonic() + 20
        while len(k8s_double.faults.injected) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(backend.cancel, handle)
        return await waiter

    final = asyncio.run(main())
    lists = len(
        [p for m, p, _ in k8s_double.request_log if m == "GET" and p.endswith("/default/pytorchjobs")]
    )
    assert [kind for kind, _, _ in k8s_double.faults.injected] == ["watch-cut", "watch-cut", "410"]
    assert lists >= 2  # the first list, and the relist after 410 Gone
    assert final[handle.id].state is State.CANCELLED  # the resumed watch still delivers


def test_cancel_deletes_and_reports_cancelled_an_external_delete_is_a_failure(k8s_double, tmp_path):
    from kubernetes import client

    backend = backend_for(k8s_double, tmp_path)
    ours = backend.submit(job_spec("a", {OUTCOME: "Hang"}), "cancel/a", 1, SubmitContext())
    theirs = backend.submit(job_spec("b", {OUTCOME: "Hang"}), "cancel/b", 1, SubmitContext())
    exp = backend.submit(load_spec(SPECS / "katib-random.yaml"), "cancel/e", 1, SubmitContext())
    run = backend.submit(run_spec("hang-run"), "cancel/r", 1, SubmitContext())
    k8s_double.set_behaviour(kfp_outcomes={"hang-run": "HANG"})

    async def main():
        waiter = asyncio.ensure_future(_until_terminal(backend, [ours, theirs]))
        await asyncio.sleep(0)  # subscribe before anything happens
        cancelled = await asyncio.to_thread(backend.cancel, ours)
        api = client.CustomObjectsApi(backend.cluster.api_client())
        await asyncio.to_thread(
            api.delete_namespaced_custom_object, "kubeflow.org", "v1", "default", "pytorchjobs", theirs.name
        )
        return cancelled, await waiter

    cancelled, final = asyncio.run(main())
    assert cancelled.state is State.CANCELLED and final[ours.id].state is State.CANCELLED
    assert final[theirs.id].state is State.FAILED and "deleted externally" in final[theirs.id].message
    assert backend.status(theirs).state is State.FAILED
    assert backend.cancel(exp).state is State.CANCELLED
    assert (
        k8s_double.objects("experiments", "kubeflow") == [] and k8s_double.objects("trials", "kubeflow") == []
    )
    assert backend.cancel(run).state is State.CANCELLED
    assert [s["state"] for s in k8s_double.runs()[0]["state_history"]][-2:] == ["CANCELING", "CANCELED"]


def test_a_cancel_from_another_process_is_seen_as_cancelled(k8s_double, tmp_path):
    backend = backend_for(k8s_double, tmp_path)
    handle = backend.submit(job_spec("x", {OUTCOME: "Hang"}), "other/x", 1, SubmitContext())
    kubeconfig = tmp_path / "kubeconfig"
    command = [sys.executable, "-m", "shared.cli", "cancel", "--key", "other/x", "--backend", "kubernetes",
               "--kubeconfig", str(kubeconfig), "--output", "json"]  # fmt: skip

    async def main():
        waiter = asyncio.ensure_future(_until_terminal(backend, [handle]))
        await asyncio.sleep(0)
        proc = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, cwd=REPO, timeout=60
        )
        return proc, await waiter

    proc, final = asyncio.run(main())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["state"] == "CANCELLED"
    assert final[handle.id].state is State.CANCELLED


def test_logs_of_each_kind(k8s_double, tmp_path):
    k8s_double.set_behaviour(job_run_seconds=0.5, kfp_run_seconds=0.2)
    backend = backend_for(k8s_double, tmp_path, log_poll_interval=0.1)
    job = backend.submit(job_spec(), "logs/j", 1, SubmitContext())
    lines = list(backend.logs(job, follow=True))
    assert any(line.startswith("epoch=") for line in lines) and lines[-1].startswith("val_rmse=")
    exp = backend.submit(load_spec(SPECS / "katib-random.yaml"), "logs/e", 1, SubmitContext())
    lines = list(backend.logs(exp, follow=True))
    assert lines[0].startswith("trial 1/12 ") and "Validation-accuracy=" in lines[0]
    assert len([line for line in lines if line.startswith("trial ")]) == 12
    assert "best Validation-accuracy=" in lines[-2] and lines[-1].startswith(
        f"experiment {exp.name} SUCCEEDED"
    )
    run = backend.submit(run_spec(), "logs/r", 1, SubmitContext())
    lines = list(backend.logs(run, follow=True))
    assert lines[0] == f"KFP run {run.id[4:]}: {run.url}" and lines[-1] == "SUCCEEDED"


def test_kubeconfig_from_the_environment_with_its_context_namespace(k8s_double, tmp_path, monkeypatch):
    from shared.backends.kubernetes import KubernetesBackend

    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kc", namespace="team-x")
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path / 'missing'}:{kubeconfig}")
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", k8s_double.kfp_url)
    backend = KubernetesBackend(kfp_token=k8s_double.kfp_token)
    handle = backend.submit(job_spec(), "env", 1, SubmitContext())
    assert handle.namespace == "team-x" and len(k8s_double.objects("pytorchjobs", "team-x")) == 1
    assert backend.submit(run_spec(), "env", 1, SubmitContext()).url.startswith(k8s_double.kfp_url)
    explicit = KubernetesBackend(host=k8s_double.url, token="s3cr3t-token", namespace="team-x")
    assert explicit.find("env", handle.kind) == handle


def test_kfp_token_file_is_read_again_on_401(k8s_double, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(k8s_double.kfp_token)
    backend = backend_for(k8s_double, tmp_path, kfp_token=None, kfp_token_file=str(token_file))
    first = backend.submit(run_spec(), "token", 1, SubmitContext())
    k8s_double.kfp_token = "rotated-token"
    token_file.write_text("rotated-token\n")
    assert backend.status(first).outputs["run_id"] == first.id[4:]


def test_mlflow_handoff_reaches_replicas_trials_and_pipeline_parameters(k8s_double, tmp_path, mlflow_server):
    from shared.operations import run_async

    backend = backend_for(k8s_double, tmp_path, kfp_mlflow_plugin=True)
    job = asyncio.run(run_async(backend, job_spec(), "mlflow/j", mlflow_tracking_uri=mlflow_server))
    obj = k8s_double.objects("pytorchjobs")[0]
    for replica in obj["spec"]["pytorchReplicaSpecs"].values():
        env = {e["name"]: e.get("value") for e in replica["template"]["spec"]["containers"][0]["env"]}
        assert (
            env["MLFLOW_RUN_ID"] == job.submission.mlflow_run_id
            and env["MLFLOW_TRACKING_URI"] == mlflow_server
        )
    spec = load_spec(COMMODITY / "pipeline_run.yaml", params={"data_path": "/data/p.csv"})
    run = asyncio.run(run_async(backend, spec, "mlflow/p", mlflow_tracking_uri=mlflow_server))
    body = next(r for r in k8s_double.runs() if r["run_id"] == run.submission.handle.id[4:])
    assert body["runtime_config"]["parameters"]["mlflow_run_id"] == run.submission.mlflow_run_id
    assert body["plugins_input"]["mlflow"]["experiment_id"] == run.submission.mlflow["experiment_id"]
    assert run.status.state is State.SUCCEEDED and job.status.state is State.SUCCEEDED


def test_a_waiter_without_access_fails_at_once_instead_of_waiting(k8s_double, tmp_path):
    from shared.backends.kubernetes import KubernetesBackend
    from shared.status import Handle, Kind

    backend = KubernetesBackend(host=k8s_double.url, token="not-a-valid-token", namespace="default")
    handle = Handle("kubernetes", Kind.TRAINING_JOB, "default/pytorchjobs/x-1", "k", resource="PyTorchJob")
    started = time.monotonic()
    with pytest.raises(BackendError, match="401"):
        asyncio.run(_until_terminal(backend, [handle]))
    assert time.monotonic() - started < 10
