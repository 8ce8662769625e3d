"""The Kubernetes/KFP test double, driven by the real `kubernetes` and `kfp` clients over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

G, NS = "kubeflow.org", "default"


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def pytorchjob(name: str, master_replicas: Any = 1, workers: int = 1, annotations: dict | None = None) -> dict:
    container = {"name": "pytorch", "image": "python:3.11-slim", "command": ["python", "train.py"]}
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": name, "labels": {"app": "demo", "key": name}, "annotations": annotations or {}},
            "spec": {"runPolicy": {"backoffLimit": 1},
                     "pytorchReplicaSpecs": {
                         "Master": {"replicas": master_replicas, "template": {"spec": {"containers": [container]}}},
                         "Worker": {"replicas": workers, "template": {"spec": {"containers": [container]}}}}}}


@pytest.fixture
def kube(k8s_double, tmp_path: Path):
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(k8s_double.write_kubeconfig(tmp_path / "kubeconfig")))
    return client.CustomObjectsApi(api), client.CoreV1Api(api)


@pytest.fixture
def kfp_api(k8s_double):
    import kfp_server_api

    conf = kfp_server_api.Configuration(host=k8s_double.kfp_url)
    conf.api_key["authorization"] = k8s_double.kfp_token
    conf.api_key_prefix["authorization"] = "Bearer"
    return kfp_server_api.ApiClient(conf)


def test_create_get_list_and_status_errors(k8s_double, kube) -> None:
    from kubernetes.client.exceptions import ApiException

    co, _ = kube
    created = co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("job-a"))
    assert created["metadata"]["generation"] == 1 and created["metadata"]["resourceVersion"]
    assert created["spec"]["runPolicy"]["suspend"] is False  # schema default
    co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("job-b"))
    with pytest.raises(ApiException) as dup:
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("job-a"))
    assert dup.value.status == 409 and json.loads(dup.value.body)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as missing:
        co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "nope")
    body = json.loads(missing.value.body)
    assert (missing.value.status, body["kind"], body["reason"]) == (404, "Status", "NotFound")
    listed = co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs", label_selector="app=demo,key=job-b")
    assert [o["metadata"]["name"] for o in listed["items"]] == ["job-b"]
    listed = co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs", label_selector="key in (job-a,job-b),app")
    assert len(listed["items"]) == 2 and int(listed["metadata"]["resourceVersion"]) >= 2

    with pytest.raises(ApiException) as webhook:
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("two-masters", master_replicas=2))
    body = json.loads(webhook.value.body)
    assert webhook.value.status == 403 and "details" not in body  # as the real webhook answers
    assert body["message"].endswith("denied the request: spec.pytorchReplicaSpecs[Master].replicas: Forbidden: must be 1") or (
        "spec.pytorchReplicaSpecs[Master].replicas" in body["message"] and "admission webhook" in body["message"])
    with pytest.raises(ApiException) as schema:
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("typo", master_replicas="two"))
    causes = json.loads(schema.value.body)["details"]["causes"]
    assert schema.value.status == 422
    assert causes[0]["field"] == "spec.pytorchReplicaSpecs.Master.replicas" and "integer" in causes[0]["message"]
    assert {o["metadata"]["name"] for o in k8s_double.objects("pytorchjobs")} == {"job-a", "job-b"}


def test_status_subresource_generation_and_conflict(kube) -> None:
    from kubernetes.client.exceptions import ApiException

    co, _ = kube
    job = co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("sub", annotations={
        "double.kubeflow-tasks.dev/outcome": "Hang"}))
    wait_for(lambda: co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "sub").get("status"))
    patched = co.patch_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "sub", {
        "spec": {"runPolicy": {"backoffLimit": 5}}, "status": {"conditions": []}})
    assert patched["metadata"]["generation"] == 2 and patched["status"]["conditions"]  # .status ignored
    fresh = co.patch_namespaced_custom_object_status(G, "v1", NS, "pytorchjobs", "sub", {
        "metadata": {"labels": {"x": "y"}}, "spec": {"runPolicy": {"backoffLimit": 9}}, "status": {"startTime": "2026-01-01T00:00:00Z", "note": "pruned"}})
    assert fresh["status"]["startTime"] == "2026-01-01T00:00:00Z" and "note" not in fresh["status"]
    assert fresh["spec"]["runPolicy"]["backoffLimit"] == 5 and fresh["metadata"]["labels"]["x"] == "y"
    assert fresh["metadata"]["generation"] == 2 and int(fresh["metadata"]["resourceVersion"]) > int(patched["metadata"]["resourceVersion"])
    stale = dict(job, spec=dict(job["spec"], runPolicy={"backoffLimit": 3}))
    with pytest.raises(ApiException) as conflict:
        co.replace_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "sub", stale)
    assert conflict.value.status == 409 and json.loads(conflict.value.body)["reason"] == "Conflict"


def test_job_lifecycle_watch_pods_and_log_follow(k8s_double, kube) -> None:
    from kubernetes import watch

    co, core = kube
    k8s_double.set_behaviour(job_run_seconds=0.4)
    co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("life", workers=2, annotations={
        "double.kubeflow-tasks.dev/outcome": "Restart-then-Succeeded"}))
    seen = []
    w = watch.Watch()
    for event in w.stream(co.list_namespaced_custom_object, G, "v1", NS, "pytorchjobs",
                          label_selector="key=life", timeout_seconds=10):
        conditions = (event["object"].get("status") or {}).get("conditions") or []
        seen.append([(c["type"], c["status"]) for c in conditions])
        if ("Succeeded", "True") in seen[-1]:
            w.stop()
    assert ("Restarting", "True") in [c for s in seen for c in s]
    assert seen[-1] == [("Created", "True"), ("Running", "False"), ("Succeeded", "True")]
    job = co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "life")
    final = job["status"]["conditions"][-1]
    assert final["reason"] == "PyTorchJobSucceeded" and final["message"] == "PyTorchJob default/life successfully completed."
    assert job["status"]["replicaStatuses"]["Worker"]["succeeded"] == 2 and job["status"]["completionTime"]
    pods = core.list_namespaced_pod(NS, label_selector="training.kubeflow.org/job-name=life,training.kubeflow.org/job-role=master")
    assert [p.metadata.name for p in pods.items] == ["life-master-0"]
    assert pods.items[0].metadata.labels["training.kubeflow.org/replica-type"] == "master"
    log = core.read_namespaced_pod_log("life-master-0", NS, container="pytorch", follow=True, _preload_content=False)
    lines = log.data.decode().splitlines()
    assert lines[0].startswith("epoch=1 loss=") and lines[-1].startswith("val_rmse=")


def test_log_follow_streams_while_running(k8s_double, kube) -> None:
    import urllib3

    co, core = kube
    k8s_double.set_behaviour(job_run_seconds=1.0)
    co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("follow"))
    wait_for(lambda: k8s_double.objects("pods") and all(p["status"]["phase"] == "Running" for p in k8s_double.objects("pods")))
    stream = core.read_namespaced_pod_log("follow-master-0", NS, follow=True, _preload_content=False)
    got = [line.decode() for line in stream.stream(64)]
    assert "".join(got).splitlines()[-1].startswith("val_rmse=") and len(got) >= 2  # arrived in pieces
    k8s_double.faults.inject("watch-cut", path_contains="/log")
    cut = core.read_namespaced_pod_log("follow-master-0", NS, follow=True, _preload_content=False)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for _ in cut.stream(64):
            pass
    assert k8s_double.faults.injected == [("watch-cut", "GET", "/api/v1/namespaces/default/pods/follow-master-0/log?follow=True")]


def test_foreground_delete_waits_for_pods(k8s_double, kube) -> None:
    from kubernetes.client.exceptions import ApiException

    co, _ = kube
    k8s_double.set_behaviour(pod_termination_seconds=0.3)
    co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("gone", annotations={
        "double.kubeflow-tasks.dev/outcome": "Hang"}))
    wait_for(lambda: len(k8s_double.objects("pods")) == 2)
    deleting = co.delete_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "gone", propagation_policy="Foreground")
    assert deleting["metadata"]["deletionTimestamp"] and "foregroundDeletion" in deleting["metadata"]["finalizers"]
    assert co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "gone")["metadata"]["deletionTimestamp"]
    wait_for(lambda: not k8s_double.objects("pytorchjobs"))
    assert not k8s_double.objects("pods")
    with pytest.raises(ApiException) as missing:
        co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "gone")
    assert missing.value.status == 404


def experiment(name: str, max_trials: int = 4, parallel: int = 2, goal: float | None = None) -> dict:
    objective = {"type": "minimize", "objectiveMetricName": "rmse"}
    if goal is not None:
        objective["goal"] = goal
    return {"apiVersion": "kubeflow.org/v1beta1", "kind": "Experiment", "metadata": {"name": name}, "spec": {
        "objective": objective, "algorithm": {"algorithmName": "tpe"},
        "parallelTrialCount": parallel, "maxTrialCount": max_trials, "maxFailedTrialCount": 1,
        "parameters": [{"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.3"}}],
        "trialTemplate": {"primaryContainerName": "training",
                          "trialParameters": [{"name": "learningRate", "reference": "lr"}],
                          "trialSpec": {"apiVersion": "batch/v1", "kind": "Job", "spec": {"template": {"spec": {
                              "restartPolicy": "Never", "containers": [{"name": "training", "image": "x",
                                                                        "command": ["--lr=${trialParameters.learningRate}"]}]}}}}}}}


def test_experiment_trials_optimal_trial_and_cascade(k8s_double, kube) -> None:
    from kubernetes.client.exceptions import ApiException

    co, _ = kube
    created = co.create_namespaced_custom_object(G, "v1beta1", NS, "experiments", experiment("tune"))
    assert created["spec"]["trialTemplate"]["successCondition"]  # Katib's defaulting webhook
    exp = wait_for(lambda: next((e for e in k8s_double.objects("experiments")
                                 if any(c["type"] == "Succeeded" for c in e.get("status", {}).get("conditions", []))), None))
    status = exp["status"]
    assert status["conditions"][-1]["reason"] == "ExperimentMaxTrialsReached"
    assert ("Running", "False") in [(c["type"], c["status"]) for c in status["conditions"]]
    assert status["trials"] == status["trialsSucceeded"] == 4 and len(status["succeededTrialList"]) == 4
    best = status["currentOptimalTrial"]
    assert best["bestTrialName"] in status["succeededTrialList"] and best["parameterAssignments"][0]["name"] == "lr"
    assert {"name", "min", "max", "latest"} <= set(best["observation"]["metrics"][0])
    trials = co.list_namespaced_custom_object(G, "v1beta1", NS, "trials", label_selector="katib.kubeflow.org/experiment=tune")
    assert len(trials["items"]) == 4
    assert all(t["metadata"]["ownerReferences"][0]["kind"] == "Experiment" for t in trials["items"])
    with pytest.raises(ApiException) as bad:
        co.create_namespaced_custom_object(G, "v1beta1", NS, "experiments", dict(experiment("bad"), spec=dict(
            experiment("bad")["spec"], algorithm={"algorithmName": "nope"})))
    assert bad.value.status == 403
    assert "spec.algorithm.algorithmName" in json.loads(bad.value.body)["message"]
    co.delete_namespaced_custom_object(G, "v1beta1", NS, "experiments", "tune", propagation_policy="Foreground")
    wait_for(lambda: not k8s_double.objects("experiments") and not k8s_double.objects("trials"))


def test_experiment_failed_when_trials_fail(k8s_double, kube) -> None:
    co, _ = kube
    body = experiment("fails")
    body["metadata"]["annotations"] = {"double.kubeflow-tasks.dev/outcome": "Failed"}
    co.create_namespaced_custom_object(G, "v1beta1", NS, "experiments", body)
    exp = wait_for(lambda: next((e for e in k8s_double.objects("experiments")
                                 if any(c["type"] == "Failed" for c in e.get("status", {}).get("conditions", []))), None))
    assert exp["status"]["conditions"][-1]["reason"] == "ExperimentFailed"
    assert exp["status"]["currentOptimalTrial"]["bestTrialName"] == ""


def test_watch_resume_bookmarks_and_410(k8s_double, kube) -> None:
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    co, _ = kube
    k8s_double.set_behaviour(bookmark_interval=0.1, job_outcome="Hang")
    rv = co.list_namespaced_custom_object(G, "v1", NS, "tfjobs")["metadata"]["resourceVersion"]
    types = []
    w = watch.Watch()
    for event in w.stream(co.list_namespaced_custom_object, G, "v1", NS, "pytorchjobs", resource_version=rv,
                          allow_watch_bookmarks=True, timeout_seconds=5):
        types.append(event["type"])
        if "BOOKMARK" in types and "ADDED" in types:
            w.stop()
        elif len(types) == 1:
            co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("later"))
    assert {"BOOKMARK", "ADDED"} <= set(types)
    k8s_double.compact()
    with pytest.raises(ApiException) as gone:
        for _ in watch.Watch().stream(co.list_namespaced_custom_object, G, "v1", NS, "pytorchjobs",
                                      resource_version=rv, timeout_seconds=2):
            pass
    assert gone.value.status == 410


def test_faults_seen_by_the_kubernetes_client(k8s_double, kube) -> None:
    import urllib3
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    co, _ = kube
    k8s_double.faults.inject("500", path_contains="/pytorchjobs")
    with pytest.raises(ApiException) as err:
        co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs")
    assert err.value.status == 500
    k8s_double.faults.inject("503", path_contains="/pytorchjobs")
    with pytest.raises(ApiException) as err:
        co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs")
    assert err.value.status == 503
    k8s_double.faults.inject("429", path_contains="/pytorchjobs")  # urllib3 honours Retry-After and retries itself
    co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs")
    assert [s for _, p, s in k8s_double.request_log if p.endswith("/pytorchjobs")][-2:] == [429, 200]
    k8s_double.faults.inject("reset", path_contains="/pytorchjobs")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("reset"))
    assert not k8s_double.objects("pytorchjobs")  # reset before processing
    k8s_double.faults.inject("reset-after", path_contains="/pytorchjobs")
    with pytest.raises(urllib3.exceptions.ProtocolError):
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("reset"))
    assert [o["metadata"]["name"] for o in k8s_double.objects("pytorchjobs")] == ["reset"]  # created, answer lost
    co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("second"))
    k8s_double.faults.inject("watch-cut", path_contains="watch")
    got = []
    with pytest.raises(urllib3.exceptions.ProtocolError):
        for event in watch.Watch().stream(co.list_namespaced_custom_object, G, "v1", NS, "pytorchjobs", timeout_seconds=5):
            got.append(event["type"])
    assert got == ["ADDED", "ADDED"]
    k8s_double.faults.inject("410", path_contains="watch")  # with timeout_seconds, Watch does not retry a 410
    with pytest.raises(ApiException) as gone:
        for _ in watch.Watch().stream(co.list_namespaced_custom_object, G, "v1", NS, "pytorchjobs", timeout_seconds=5):
            pass
    assert gone.value.status == 410
    assert [k for k, _, _ in k8s_double.faults.injected] == ["500", "503", "429", "reset", "reset-after",
                                                              "watch-cut", "410"]


def test_unauthorized_without_token(k8s_double, tmp_path: Path) -> None:
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kc")
    text = kubeconfig.read_text().replace("s3cr3t-token", "wrong")
    kubeconfig.write_text(text)
    co = client.CustomObjectsApi(config.new_client_from_config(config_file=str(kubeconfig)))
    with pytest.raises(ApiException) as err:
        co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs")
    assert err.value.status == 401


def test_kfp_run_lifecycle_filter_and_terminate(k8s_double, kfp_api) -> None:
    import kfp_server_api

    runs = kfp_server_api.RunServiceApi(kfp_api)
    spec = {"pipelineInfo": {"name": "p"}, "root": {}}
    ok = runs.run_service_create_run(kfp_server_api.V2beta1Run(display_name="nightly-ok", pipeline_spec=spec,
                                                                runtime_config={"parameters": {"x": 1}}))
    hang = runs.run_service_create_run(kfp_server_api.V2beta1Run(
        display_name="nightly-hang", pipeline_spec=spec, runtime_config={"parameters": {"double_outcome": "HANG"}}))
    assert ok.state == "PENDING"
    wait_for(lambda: runs.run_service_get_run(ok.run_id).state == "SUCCEEDED")
    done = runs.run_service_get_run(ok.run_id)
    assert [s.state for s in done.state_history] == ["PENDING", "RUNNING", "SUCCEEDED"] and done.finished_at.year > 1970
    found = runs.run_service_list_runs(filter=json.dumps({"predicates": [
        {"operation": "EQUALS", "key": "display_name", "string_value": "nightly-hang"}]}))
    assert [r.run_id for r in found.runs] == [hang.run_id] and found.total_size == 1
    found = runs.run_service_list_runs(filter=json.dumps({"predicates": [
        {"operation": "IN", "key": "state", "string_values": {"values": ["PENDING", "RUNNING"]}}]}))
    assert [r.run_id for r in found.runs] == [hang.run_id]
    page = runs.run_service_list_runs(page_size=1)
    assert len(page.runs) == 1 and page.next_page_token
    runs.run_service_terminate_run(hang.run_id)
    wait_for(lambda: runs.run_service_get_run(hang.run_id).state == "CANCELED")
    assert "CANCELING" in [s.state for s in runs.run_service_get_run(hang.run_id).state_history]
    assert [r["state"] for r in k8s_double.runs()] == ["SUCCEEDED", "CANCELED"]
    assert k8s_double.events_at[f"runs/{hang.run_id}"][-1][1] == "CANCELED"


def test_kfp_validation_auth_and_faults(k8s_double, kfp_api) -> None:
    import kfp_server_api
    from kfp_server_api.exceptions import ApiException

    runs = kfp_server_api.RunServiceApi(kfp_api)
    with pytest.raises(ApiException) as err:
        runs.run_service_create_run(kfp_server_api.V2beta1Run(display_name="x"))
    assert err.value.status == 400 and "pipeline spec" in json.loads(err.value.body)["message"]
    with pytest.raises(ApiException) as err:
        kfp_api.call_api("/apis/v2beta1/runs", "POST", body={"display_name": "x", "pipeline_spec": {}, "bogus": 1},
                         header_params={"Content-Type": "application/json"}, auth_settings=["Bearer"],
                         response_type="V2beta1Run", _return_http_data_only=True)
    assert err.value.status == 400 and "bogus" in json.loads(err.value.body)["message"]
    with pytest.raises(ApiException) as err:
        runs.run_service_create_run(kfp_server_api.V2beta1Run(display_name="x", pipeline_spec={"a": 1},
                                                               plugins_input={"mlflow": {"bad_key": 1}}))
    assert err.value.status == 400
    k8s_double.faults.inject("500", path_contains="/runs")
    with pytest.raises(ApiException) as err:
        runs.run_service_list_runs()
    assert err.value.status == 500 and json.loads(err.value.body)["code"] == 13
    k8s_double.kfp_token = "rotated"
    with pytest.raises(ApiException) as err:
        runs.run_service_list_runs()
    assert err.value.status == 401 and json.loads(err.value.body)["code"] == 16


def test_kfp_client_upload_and_run(k8s_double, tmp_path: Path) -> None:
    import kfp
    import yaml

    package = tmp_path / "pipe.yaml"  # the shape of a compiled KFP v2 package
    package.write_text(yaml.safe_dump({
        "pipelineInfo": {"name": "hello"}, "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.17.3",
        "root": {"dag": {"tasks": {}}, "inputDefinitions": {"parameters": {"n": {"parameterType": "NUMBER_INTEGER"}}}}}))
    client = kfp.Client(host=k8s_double.kfp_url, existing_token=k8s_double.kfp_token, namespace="x")
    pipeline = client.upload_pipeline(str(package), pipeline_name="hello")
    assert pipeline.pipeline_id
    result = client.create_run_from_pipeline_package(str(package), arguments={"n": 3}, run_name="r1",
                                                      experiment_name="exp-1")
    wait_for(lambda: client.get_run(result.run_id).state == "SUCCEEDED")
    assert client.get_experiment(experiment_name="exp-1").experiment_id == client.get_run(result.run_id).experiment_id
    assert k8s_double.request_count("GET", "/healthz") == 0


def tfjob(name: str, annotations: dict | None = None) -> dict:
    container = {"name": "tensorflow", "image": "tensorflow/tensorflow:2.16.1", "command": ["python", "train.py"]}
    spec = {"template": {"spec": {"containers": [container]}}}
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob",
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"tfReplicaSpecs": {"PS": dict(spec, replicas=1), "Worker": dict(spec, replicas=2)}}}


def test_tfjob_lifecycle_worker_zero_decides(k8s_double, kube) -> None:
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    co, core = kube
    k8s_double.set_behaviour(job_run_seconds=0.3)
    with pytest.raises(ApiException) as bad:
        co.create_namespaced_custom_object(G, "v1", NS, "tfjobs", dict(tfjob("two-chiefs"), spec={"tfReplicaSpecs": {
            "Chief": tfjob("x")["spec"]["tfReplicaSpecs"]["PS"], "Master": tfjob("x")["spec"]["tfReplicaSpecs"]["PS"]}}))
    assert bad.value.status == 403 and "more than 1 Chief or Master" in json.loads(bad.value.body)["message"]
    created = co.create_namespaced_custom_object(G, "v1", NS, "tfjobs", tfjob("tf"))
    kinds = []
    w = watch.Watch()
    for event in w.stream(co.list_namespaced_custom_object, G, "v1", NS, "tfjobs",
                          resource_version=created["metadata"]["resourceVersion"], timeout_seconds=10):
        conditions = (event["object"].get("status") or {}).get("conditions") or []
        kinds.append([c["type"] for c in conditions if c["status"] == "True"])
        if "Succeeded" in kinds[-1]:
            w.stop()
    assert kinds[0] == ["Created"] and ["Created", "Running"] in kinds and "Succeeded" in kinds[-1]
    job = co.get_namespaced_custom_object(G, "v1", NS, "tfjobs", "tf")
    final = job["status"]["conditions"][-1]
    assert (final["reason"], final["message"]) == ("TFJobSucceeded", "TFJob default/tf successfully completed.")
    assert {t: s.get("succeeded") for t, s in job["status"]["replicaStatuses"].items()} == {"PS": 1, "Worker": 2}
    pods = core.list_namespaced_pod(NS, label_selector="training.kubeflow.org/job-name=tf")
    assert sorted(p.metadata.name for p in pods.items) == ["tf-ps-0", "tf-worker-0", "tf-worker-1"]
    roles = {p.metadata.name: p.metadata.labels.get("training.kubeflow.org/job-role") for p in pods.items}
    assert roles == {"tf-ps-0": None, "tf-worker-0": "master", "tf-worker-1": None}  # no Chief: worker 0 is master
    log = core.read_namespaced_pod_log("tf-worker-0", NS).splitlines()
    assert log[0].startswith("epoch=1") and log[-1].startswith("val_rmse=")


def _failed_condition(k8s_double, name: str) -> dict | None:
    job = next((j for j in k8s_double.objects("pytorchjobs") if j["metadata"]["name"] == name), None)
    conditions = ((job or {}).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Failed" and c["status"] == "True"), None)


def test_backoff_limit_and_active_deadline_fail_the_job(k8s_double, kube) -> None:
    from kubernetes import watch

    co, core = kube
    k8s_double.set_behaviour(job_run_seconds=0.2)
    crash = pytorchjob("crash", annotations={"double.kubeflow-tasks.dev/outcome": "CrashLoop"})
    crash["spec"]["runPolicy"] = {"backoffLimit": 2, "cleanPodPolicy": "None"}
    created = co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", crash)
    slow = pytorchjob("slow", annotations={"double.kubeflow-tasks.dev/outcome": "Hang"})
    slow["spec"]["runPolicy"] = {"activeDeadlineSeconds": 1}
    co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", slow)

    failed = wait_for(lambda: _failed_condition(k8s_double, "crash"))
    assert (failed["reason"], failed["message"]) == (
        "PyTorchJobFailed", "Job crash has failed because it has reached the specified backoff limit")
    failed_rv = int(co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "crash")["metadata"]["resourceVersion"])
    restarts = []  # (resourceVersion, restartCount) of the master pod, replayed from the watch history
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_pod, NS, resource_version=created["metadata"]["resourceVersion"],
                          label_selector="training.kubeflow.org/job-name=crash,training.kubeflow.org/job-role=master",
                          timeout_seconds=5):
        pod = event["raw_object"]
        count = sum(cs.get("restartCount", 0) for cs in pod["status"].get("containerStatuses") or [])
        restarts.append((int(pod["metadata"]["resourceVersion"]), count))
        if event["type"] == "DELETED":  # pods go even with cleanPodPolicy None (training-operator #3419)
            w.stop()
    assert [c for _, c in restarts if c] == sorted(c for _, c in restarts if c) and max(c for _, c in restarts) == 2
    assert next(rv for rv, c in restarts if c == 2) < failed_rv  # failed once the second restart was seen
    assert "RuntimeError" in "\n".join(k8s_double.pod_log("crash-master-0"))

    failed = wait_for(lambda: _failed_condition(k8s_double, "slow"))
    assert (failed["reason"], failed["message"]) == (
        "PyTorchJobFailed", "Job slow has failed because it was active longer than specified deadline")
    job = co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "slow")
    assert job["status"]["completionTime"]
    assert [(c["type"], c["status"]) for c in job["status"]["conditions"]] == [
        ("Created", "True"), ("Running", "False"), ("Failed", "True")]
    wait_for(lambda: not k8s_double.objects("pods"))


TRANSIENT = (429, 500, 503)


def _with_retries(call: Callable[[], Any], already_done: Callable[[Exception], Any] = lambda err: None) -> Any:
    """What a careful client does on top of urllib3's own retries: retry transient failures, and after an
    ambiguous one ask `already_done` whether the request took effect before the answer was lost."""
    import urllib3
    from kfp_server_api.exceptions import ApiException as KfpApiException
    from kubernetes.client.exceptions import ApiException as KubeApiException

    for _ in range(40):
        try:
            return call()
        except (KubeApiException, KfpApiException, urllib3.exceptions.HTTPError) as err:
            status = getattr(err, "status", None)
            if status is not None and status not in TRANSIENT and status != 409:
                raise
            done = already_done(err)
            if done:
                return done
    raise AssertionError("still failing after 40 attempts")


def _informer(co, names: set[str], stop_at: float) -> tuple[dict[str, dict], list[str]]:
    """List, then watch from the list's resourceVersion, resume after cuts and errors, relist after 410:
    the view a controller builds. Returns it once every job in `names` has succeeded, and what it went through."""
    import urllib3
    from kubernetes import watch
    from kubernetes.client.exceptions import ApiException

    view: dict[str, dict] = {}
    rv, trail = None, []

    def finished() -> bool:
        return names <= set(view) and all(
            any(c["type"] == "Succeeded" for c in (view[n].get("status") or {}).get("conditions") or []) for n in names)

    while not finished() and time.monotonic() < stop_at:
        try:
            if rv is None:
                listed = co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs", label_selector="app=demo")
                view = {o["metadata"]["name"]: o for o in listed["items"]}
                rv = listed["metadata"]["resourceVersion"]
                trail.append("list")
            for event in watch.Watch().stream(co.list_namespaced_custom_object, G, "v1", NS, "pytorchjobs",
                                              label_selector="app=demo", resource_version=rv, timeout_seconds=2):
                obj = event["raw_object"]
                assert int(obj["metadata"]["resourceVersion"]) > int(rv), "a resumed watch went back in time"
                rv = obj["metadata"]["resourceVersion"]
                if event["type"] == "DELETED":
                    view.pop(obj["metadata"]["name"], None)
                else:
                    view[obj["metadata"]["name"]] = obj
                if finished():
                    break
        except ApiException as err:
            trail.append(str(err.status))
            if err.status == 410:
                rv = None
            elif err.status not in TRANSIENT:
                raise
        except urllib3.exceptions.HTTPError:
            trail.append("broken")
    return view, trail


def test_random_faults_leave_the_double_consistent(k8s_double, kube, kfp_api) -> None:
    import threading

    import kfp_server_api

    co, _ = kube
    k8s_double.set_behaviour(job_run_seconds=0.2, kfp_run_seconds=0.1)
    names = {f"chaos-{i}" for i in range(8)}

    def create_job(name: str) -> None:
        _with_retries(lambda: co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob(name)),
                      lambda err: getattr(err, "status", None) == 409)  # created before, the answer was lost

    # Besides 20% random faults, each ambiguous case at least once: a create whose answer is lost (job
    # and KFP run), a watch that expired (relist), a watch cut mid-stream (resume).
    for kind, where in (("reset-after", "/pytorchjobs"), ("reset-after", "/apis/v2beta1/runs"),
                        ("410", "watch=True"), ("watch-cut", "watch=True")):
        k8s_double.faults.inject(kind, path_contains=where)
    k8s_double.faults.configure(rate=0.2, seed=7)
    create_job("chaos-0")  # before the informer starts, so its list does not take the first injected reset
    seen: dict[str, Any] = {}

    def watch_jobs() -> None:
        seen["view"], seen["trail"] = _informer(co, names, time.monotonic() + 25)

    informer = threading.Thread(target=watch_jobs)
    informer.start()
    for name in sorted(names - {"chaos-0"}):
        create_job(name)

    experiments, runs = kfp_server_api.ExperimentServiceApi(kfp_api), kfp_server_api.RunServiceApi(kfp_api)
    exp = _with_retries(lambda: experiments.experiment_service_create_experiment(
        kfp_server_api.V2beta1Experiment(display_name="chaos")), lambda err: getattr(err, "status", None) == 409 and
        _with_retries(lambda: experiments.experiment_service_list_experiments(filter=json.dumps({"predicates": [
            {"operation": "EQUALS", "key": "display_name", "string_value": "chaos"}]}))).experiments[0])
    run_names = [f"chaos-run-{i}" for i in range(4)]

    def existing_run(name: str) -> Any:  # runs have no name uniqueness: look before creating again
        found = _with_retries(lambda: runs.run_service_list_runs(filter=json.dumps({"predicates": [
            {"operation": "EQUALS", "key": "display_name", "string_value": name}]})))
        return (found.runs or [None])[0]

    for name in run_names:
        _with_retries(lambda name=name: runs.run_service_create_run(kfp_server_api.V2beta1Run(
            display_name=name, experiment_id=exp.experiment_id, pipeline_spec={"pipelineInfo": {"name": "p"}})),
            lambda err, name=name: existing_run(name))
    informer.join(timeout=30)
    k8s_double.faults.clear()

    injected = k8s_double.faults.injected
    assert injected[0] == ("reset-after", "POST", "/apis/kubeflow.org/v1/namespaces/default/pytorchjobs")
    assert ("reset-after", "POST", "/apis/v2beta1/runs") in injected and len(injected) > 4, injected
    view, trail = seen["view"], seen["trail"]
    assert "410" in trail and "broken" in trail and trail.count("list") >= 2, trail  # relisted, resumed
    stored = {o["metadata"]["name"]: o for o in k8s_double.objects("pytorchjobs")}
    assert set(stored) == names, "exactly the jobs asked for, once each"
    assert {n: o["metadata"]["resourceVersion"] for n, o in view.items()} == {
        n: o["metadata"]["resourceVersion"] for n, o in stored.items()}, f"the informer's view drifted ({trail})"
    assert [e.display_name for e in experiments.experiment_service_list_experiments().experiments].count("chaos") == 1
    listed = runs.run_service_list_runs(experiment_id=exp.experiment_id).runs
    assert sorted(r.display_name for r in listed) == run_names, "one run per name despite lost answers"
    wait_for(lambda: all(r["state"] == "SUCCEEDED" for r in k8s_double.runs()))


def test_dry_run_validates_defaults_and_stores_nothing(k8s_double, kube) -> None:
    from kubernetes.client.exceptions import ApiException

    co, _ = kube
    answer = co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("dry-a"), dry_run="All")
    assert answer["spec"]["runPolicy"]["suspend"] is False and not answer["metadata"].get("resourceVersion")
    assert co.list_namespaced_custom_object(G, "v1", NS, "pytorchjobs")["items"] == []
    with pytest.raises(ApiException) as refused:  # the webhook judges a dry run like a real create
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("dry-b", master_replicas=2), dry_run="All")
    assert refused.value.status == 403
    with pytest.raises(ApiException) as bad:
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("dry-c"), dry_run="Yes")
    assert bad.value.status == 400
    co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("dry-d"))
    with pytest.raises(ApiException) as exists:  # existence is checked too
        co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", pytorchjob("dry-d"), dry_run="All")
    assert exists.value.status == 409


def test_kueue_creates_queued_jobs_suspended_and_admits_them(k8s_double, kube) -> None:
    co, _ = kube
    k8s_double.set_behaviour(kueue_admit_seconds=0.5)
    job = pytorchjob("queued-a")
    job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "q"
    created = co.create_namespaced_custom_object(G, "v1", NS, "pytorchjobs", job)
    assert created["spec"]["runPolicy"]["suspend"] is True  # Kueue's mutating webhook
    wait_for(lambda: any(c["type"] == "Suspended" and c["status"] == "True" for c in
                         (co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "queued-a").get("status") or {})
                         .get("conditions", [])))
    done = wait_for(lambda: next((o for o in [co.get_namespaced_custom_object(G, "v1", NS, "pytorchjobs", "queued-a")]
                                  if any(c["type"] == "Succeeded" for c in o["status"]["conditions"])), None))
    assert done["spec"]["runPolicy"]["suspend"] is False
    assert {"type": "Suspended", "status": "False"}.items() <= next(
        c for c in done["status"]["conditions"] if c["type"] == "Suspended").items()


def test_kfp_multi_user_mode(k8s_double, kfp_api) -> None:
    import kfp_server_api
    from kfp_server_api.exceptions import ApiException

    k8s_double.set_behaviour(kfp_multi_user=True)
    assert kfp_server_api.HealthzServiceApi(kfp_api).healthz_service_get_healthz().multi_user is True
    runs = kfp_server_api.RunServiceApi(kfp_api)
    with pytest.raises(ApiException) as unscoped:
        runs.run_service_list_runs()
    assert unscoped.value.status == 400 and "namespace" in unscoped.value.body
    spec = {"pipelineInfo": {"name": "p"}, "root": {"dag": {"tasks": {}}}, "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.17.0"}
    with pytest.raises(ApiException) as homeless:
        runs.run_service_create_run(kfp_server_api.V2beta1Run(display_name="r", pipeline_spec=spec))
    assert "empty namespace in multi-user mode" in homeless.value.body
    exp = kfp_server_api.ExperimentServiceApi(kfp_api).experiment_service_create_experiment(
        kfp_server_api.V2beta1Experiment(display_name="Default", namespace="team-a"))
    run = runs.run_service_create_run(kfp_server_api.V2beta1Run(display_name="r", pipeline_spec=spec,
                                                                experiment_id=exp.experiment_id))
    assert [r.run_id for r in runs.run_service_list_runs(namespace="team-a").runs] == [run.run_id]
    assert not runs.run_service_list_runs(namespace="team-b").runs
