"""MLflow credentials never leave as text, and the task's MLflow run is ended and placed as asked (issue 10).

A canary password rides in the tracking URI; after a real run against a real MLflow server it must be
in no file of the state directory, no console line and no custom resource, while the work still
receives it (as MLflow's own MLFLOW_TRACKING_PASSWORD variable).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

CANARY = "CANARY-pw-7f3a9c"
REPLICA = (
    "import os, mlflow\n"
    "print('handed uri:', os.environ['MLFLOW_TRACKING_URI'])\n"
    "print('has password:', os.environ.get('MLFLOW_TRACKING_PASSWORD') == os.environ['EXPECTED'])\n"
    "with mlflow.start_run():\n"
    "    mlflow.log_metric('loss', 0.25)\n"
    "    print('tracking at', mlflow.get_tracking_uri())\n"
)


def job(tmp_path: Path, code: str = REPLICA, name: str = "canary") -> Path:
    manifest = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "restartPolicy": "Never", "template": {"spec": {
            "containers": [{"name": "pytorch", "image": "python:3.11", "command": ["python", "-c", code]}]}}}}},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


def with_password(uri: str, password: str = CANARY) -> str:
    return uri.replace("http://", f"http://canary-user:{password}@")


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "shared.cli", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, **(env or {})},
    )


def files_holding(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and not p.is_symlink() and secret.encode() in p.read_bytes()]


def test_the_canary_password_is_in_no_file_log_or_console(tmp_path: Path, state_dir: Path, mlflow_server):
    proc = run_cli(
        "run", "training-job", "--spec", str(job(tmp_path)), "--key", "canary",
        "--mlflow-tracking-uri", with_password(mlflow_server), "--output", "json",
        env={"EXPECTED": CANARY},
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert CANARY not in proc.stdout and CANARY not in proc.stderr
    assert files_holding(state_dir, CANARY) == []
    # ... and yet the work had the credentials and its MLflow resumed our run.
    assert "has password: True" in proc.stderr
    assert f"handed uri: {mlflow_server}" in proc.stderr
    run = MlflowClient(mlflow_server).get_run(result["mlflow_run_id"])
    assert run.data.metrics["loss"] == 0.25 and run.info.status == "FINISHED"
    assert all(CANARY not in str(v) for v in run.data.tags.values())


def test_a_kubernetes_object_refers_to_a_secret_and_never_holds_the_password(
    k8s_double, tmp_path: Path, state_dir: Path, mlflow_server
):
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    base = ["run", "training-job", "--spec", str(job(tmp_path, code="print(1)", name="remote")),
            "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
            "--mlflow-tracking-uri", with_password(mlflow_server), "--detach", "--output", "json"]

    refused = run_cli(*base, "--key", "no-secret-named")
    assert refused.returncode == 2, refused.stderr
    assert "--mlflow-credentials-secret" in refused.stderr and CANARY not in refused.stderr
    assert k8s_double.objects("pytorchjobs") == []

    proc = run_cli(*base, "--key", "secret-named", "--mlflow-credentials-secret", "mlflow-credentials")
    assert proc.returncode == 0, proc.stderr
    (obj,) = k8s_double.objects("pytorchjobs")
    assert CANARY not in json.dumps(obj)
    env = obj["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    by_name = {e["name"]: e for e in env}
    assert by_name["MLFLOW_TRACKING_URI"]["value"] == mlflow_server
    assert by_name["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlflow-credentials", "key": "MLFLOW_TRACKING_PASSWORD", "optional": True}
    assert CANARY not in proc.stdout + proc.stderr


def test_a_refused_submission_ends_the_mlflow_run_failed_with_the_reason(tmp_path: Path, mlflow_server):
    shared_root = tmp_path / "shared-root"
    shared_root.mkdir()
    shared_root.chmod(0o777)  # the local backend refuses it, after the MLflow run was opened
    proc = run_cli(
        "run", "training-job", "--spec", str(job(tmp_path, code="print(1)", name="refused")),
        "--key", "refused-key", "--mlflow-tracking-uri", mlflow_server, "--mlflow-experiment", "refusals",
        env={"KUBEFLOW_TASKS_STATE_DIR": str(shared_root)},
    )
    assert proc.returncode == 2, proc.stderr
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("refusals")
    (run,) = client.search_runs([experiment.experiment_id], "tags.`kubeflow_tasks.key` = 'refused-key'")
    assert run.info.status == "FAILED"
    assert "KUBEFLOW_TASKS_STATE_DIR" in run.data.tags["kubeflow_tasks.message"]


def test_the_experiment_follows_the_option_then_mlflow_experiment_name(tmp_path: Path, state_dir: Path, mlflow_server):
    spec = str(job(tmp_path, code="print(1)", name="placed"))
    from_env = run_cli("run", "training-job", "--spec", spec, "--key", "env-exp", "--mlflow-tracking-uri",
                       mlflow_server, "--output", "json", env={"MLFLOW_EXPERIMENT_NAME": "from-env"})
    from_option = run_cli("run", "training-job", "--spec", spec, "--key", "opt-exp", "--mlflow-tracking-uri",
                          mlflow_server, "--mlflow-experiment", "from-option", "--output", "json",
                          env={"MLFLOW_EXPERIMENT_NAME": "from-env"})
    client = MlflowClient(mlflow_server)
    for proc, name in ((from_env, "from-env"), (from_option, "from-option")):
        assert proc.returncode == 0, proc.stderr
        run = client.get_run(json.loads(proc.stdout)["mlflow_run_id"])
        assert run.info.experiment_id == client.get_experiment_by_name(name).experiment_id
