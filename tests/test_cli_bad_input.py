"""Hostile and careless input through the CLI: one line naming the field, exit code 2, nothing started.

(test_cli_bad_specs.py holds malformed manifests; this table holds what breaks the reading itself:
bombs, encodings, special files, oversized or NUL-laden values, empty options, duplicates.)
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import yaml

from shared.cli import main
from shared.specs.common import load_document

JOB = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "PyTorchJob",
    "metadata": {"name": "train"},
    "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "pytorch", "image": "python:3.11-slim", "command": ["python", "-c", "print(1)", "${params.x}"]}]}}}}},
}
JOB_TEXT = yaml.safe_dump(JOB)
BOMB = "\n".join(
    [f'l0: &l0 [{",".join(["lol"] * 9)}]']
    + [f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]
) + "\n"


def write(tmp_path: Path, name: str, content: str | bytes) -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def fifo(tmp_path: Path) -> str:
    path = tmp_path / "spec.yaml"
    os.mkfifo(path)
    return str(path)


SPEC_CASES = {
    "alias bomb": (lambda t: write(t, "bomb.yaml", BOMB), "bomb.yaml: too large"),
    "5000 levels": (lambda t: write(t, "deep.yaml", "a: " + "[" * 5000 + "]" * 5000 + "\n"), "deep.yaml: nested deeper"),
    "deep json": (lambda t: write(t, "deep.json", '{"a": ' + "[" * 5000 + "]" * 5000 + "}"), "deep.json: nested deeper"),
    "utf-16": (lambda t: write(t, "u16.yaml", JOB_TEXT.encode("utf-16")), "u16.yaml: the spec file must be UTF-8"),
    "latin-1": (lambda t: write(t, "l1.yaml", JOB_TEXT.replace("train", "tr\xe9in").encode("latin-1")), "l1.yaml: the spec file must be UTF-8"),
    "/dev/zero": (lambda t: "/dev/zero", "/dev/zero: the spec file must be a regular file"),
    "a fifo": (fifo, "spec.yaml: the spec file must be a regular file, not a FIFO"),
    "a directory": (lambda t: str(t), "the spec file must be a regular file, not a directory"),
    "duplicate yaml key": (lambda t: write(t, "dup.yaml", JOB_TEXT + "kind: TFJob\n"), "dup.yaml: kind: duplicate key"),
    "duplicate json key": (lambda t: write(t, "dup.json", json.dumps(JOB)[:-1] + ', "kind": "TFJob"}'), "dup.json: kind: duplicate key"),
    "nul in command": (
        lambda t: write(t, "nul.yaml", JOB_TEXT.replace("print(1)", '"print(1)\\0"').replace("''", "'")),
        "spec.pytorchReplicaSpecs.Master.template.spec.containers[0].command[2]: must not contain a NUL byte",
    ),
    "1 MB argument": (
        lambda t: write(t, "big.yaml", yaml.safe_dump({**JOB, "spec": {"pytorchReplicaSpecs": {"Master": {
            "replicas": 1, "template": {"spec": {"containers": [{"name": "pytorch", "image": "i",
                                                                  "command": ["python", "x" * 1_000_000]}]}}}}}})),
        "spec.pytorchReplicaSpecs.Master.template.spec.containers[0].command[1]: is longer than",
    ),
    "over 3 MiB": (lambda t: write(t, "huge.yaml", "# " + "x" * (3 * 1024 * 1024) + "\n" + JOB_TEXT), "huge.yaml: the spec file is larger"),
}


@pytest.mark.parametrize("case", list(SPEC_CASES))
def test_unreadable_specs_exit_2_with_one_line(tmp_path: Path, state_dir: Path, capsys, case):
    make, expected = SPEC_CASES[case]
    spec = make(tmp_path)
    started = time.monotonic()
    code = main(["run", "training-job", "--spec", spec, "--param", "x=1", "--key", "k"])
    elapsed = time.monotonic() - started
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert expected in lines[0], lines[0]
    assert captured.out == ""
    assert not (state_dir / "runs").exists()
    # Not a speed goal (the refusal is proven by the bound's own message above): a liveness check
    # that catches the unbounded expansion, which took 52 s at 7 levels and hung at 9.
    assert elapsed < 60, f"{case} took {elapsed:.1f}s"


def test_an_alias_bomb_is_refused_well_under_a_second(tmp_path: Path):
    path = write(tmp_path, "bomb.yaml", BOMB)
    assert os.path.getsize(path) < 1024
    started = time.monotonic()
    with pytest.raises(ValueError, match="too large"):
        load_document(path)
    assert time.monotonic() - started < 1.0


def test_anchors_within_bounds_still_work(tmp_path: Path):
    """Real manifests use anchors for shared container blocks: those load as before."""
    text = JOB_TEXT.replace("metadata:", "x-common: &common {image: python:3.11-slim}\nmetadata:")
    doc = load_document(write(tmp_path, "ok.yaml", text + "copy: *common\n"))
    assert doc["copy"] == {"image": "python:3.11-slim"}


ARG_CASES = [
    (["--param", "x=1", "--param", "x=2"], "--param: 'x' is given twice"),
    (["--param", "x=a\x00b"], "--param x: must not contain a NUL byte"),
    (["--param", "x=" + "v" * (1024 * 1024)], "--param x: value is"),
    (["--param", "=1"], "--param: expected NAME=VALUE"),
    (["--param", "x=1", "--key", ""], "--key: must not be empty"),
    (["--param", "x=1", "--key", "   "], "--key: must not be empty"),
    (["--param", "x=1", "--key", "a\x00b"], "--key: must be printable"),
    (["--param", "x=1", "--key", "k" * 600], "--key: is 600 characters long"),
    (["--param", "x=1", "--timeout", ""], "--timeout: must not be empty"),
    (["--param", "x=1", "--mlflow-experiment", ""], "--mlflow-experiment: must be non-empty"),
    (["--param", "x=1", "--mlflow-credentials-secret", "s"], "--mlflow-credentials-secret: only applies"),
]


@pytest.mark.parametrize("args, expected", ARG_CASES, ids=[e for _, e in ARG_CASES])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, state_dir: Path, capsys, args, expected):
    spec = write(tmp_path, "job.yaml", JOB_TEXT)
    code = main(["run", "training-job", "--spec", spec, *args])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and expected in lines[0], captured.err[:500]
    assert not (state_dir / "runs").exists()


def test_a_kubeconfig_that_is_not_a_mapping_exits_2(tmp_path: Path, state_dir: Path, capsys):
    spec = write(tmp_path, "job.yaml", JOB_TEXT)
    kubeconfig = write(tmp_path, "kubeconfig", "- just\n- a list\n")
    code = main(["run", "training-job", "--spec", spec, "--param", "x=1", "--backend", "kubernetes",
                 "--kubeconfig", kubeconfig])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "kubeconfig:" in lines[0], lines


@pytest.mark.parametrize("name", ["..", ".", "Bad_Name"])
def test_a_kubernetes_id_with_a_dot_name_never_reaches_the_api(k8s_double, tmp_path: Path, capsys, name):
    """`cancel ns/pytorchjobs/..` once became DELETE .../pytorchjobs/: every job in the namespace."""
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    for command in ("cancel", "status"):
        code = main([command, f"default/pytorchjobs/{name}", "--backend", "kubernetes", "--kubeconfig", str(kubeconfig)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "run_id:" in lines[0], lines
    assert k8s_double.request_count("DELETE") == 0
    assert k8s_double.request_count("GET", "/pytorchjobs") == 0


def test_a_kfp_run_id_that_is_a_path_never_reaches_the_api(k8s_double, tmp_path: Path, capsys):
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    code = main(["cancel", "kfp/..", "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                 "--kfp-host", k8s_double.kfp_url])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "run_id:" in lines[0], lines
    assert k8s_double.request_count("POST", ":terminate") == 0


def test_rejected_credentials_exit_2_with_one_line(k8s_double, tmp_path: Path, state_dir: Path, capsys):
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    kubeconfig.write_text(kubeconfig.read_text().replace("s3cr3t-token", "wrong-token"))
    spec = write(tmp_path, "job.yaml", JOB_TEXT)
    code = main(["run", "training-job", "--spec", spec, "--param", "x=1", "--backend", "kubernetes",
                 "--kubeconfig", str(kubeconfig), "--key", "k"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == 2, err
    assert len(lines) == 1 and "401" in lines[0], err
    assert "Traceback" not in err and "wrong-token" not in err


def test_an_unreachable_kfp_host_exits_2_with_one_line(k8s_double, tmp_path: Path, state_dir: Path, capsys):
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kubeconfig = k8s_double.write_kubeconfig(tmp_path / "kubeconfig")
    pipeline = write(tmp_path, "run.yaml", yaml.safe_dump({
        "apiVersion": "kubeflow-tasks/v1", "kind": "PipelineRun", "metadata": {"name": "p"},
        "spec": {"pipeline": "dags.commodity.pipeline:commodity_pipeline"}}))
    code = main(["run", "pipeline", "--spec", pipeline, "--backend", "kubernetes", "--kubeconfig", str(kubeconfig),
                 "--kfp-host", f"http://127.0.0.1:{port}", "--key", "k"])
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert code == 2, err
    assert len(lines) == 1 and "cannot reach" in lines[0], err
    assert "Traceback" not in err
