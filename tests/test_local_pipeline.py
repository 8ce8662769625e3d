"""Local KFP pipeline runs: real kfp.local in a real child process group, offline.

Every run gets an environment in which any pip install fails: no index (PIP_NO_INDEX, and an index
URL on a closed loopback port) and PIP_FORCE_REINSTALL, so even an already-installed requirement
would have to be downloaded. A task that still pip-installed would fail its run.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from shared.backends.local import procs
from shared.backends.local.kfp_exec import load_ir, pipeline_arguments, rewrite_executors
from shared.backends.local.pipeline import PipelineRunner, TaskLog
from shared.backends.local.runner import RunContext
from shared.errors import SpecError
from shared.specs import load_spec
from shared.specs.model import PipelineRunSpec
from shared.status import State, Status

REPO = Path(__file__).resolve().parents[1]
PIPELINES = Path(__file__).parent / "data" / "pipelines"
COMPILED = PIPELINES / "compiled_hello.yaml"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


OFFLINE = {
    "PIP_NO_INDEX": "1",
    "PIP_FORCE_REINSTALL": "1",
    "PIP_INDEX_URL": f"http://127.0.0.1:{closed_port()}/simple",
}


@dataclass
class Run:
    runner: PipelineRunner
    workdir: Path
    reports: list[Status] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def make_run(
    tmp_path: Path,
    pipeline: str,
    parameters: dict | None = None,
    env: dict[str, str] | None = None,
    mlflow: dict[str, str] | None = None,
) -> Run:
    """A runner for a test pipeline of tests/data/pipelines."""
    spec = PipelineRunSpec(
        name="test", pipeline=pipeline, base_dir=str(PIPELINES), parameters=parameters or {}
    )
    return runner_for(tmp_path, spec, env, mlflow)


def runner_for(
    tmp_path: Path,
    spec: PipelineRunSpec,
    env: dict[str, str] | None = None,
    mlflow: dict[str, str] | None = None,
) -> Run:
    reports: list[Status] = []
    lines: list[str] = []
    workdir = tmp_path / "run"
    ctx = RunContext(
        workdir=workdir,
        env={**OFFLINE, **(env or {})},
        mlflow=mlflow or {},
        report=reports.append,
        log=lines.append,
    )
    return Run(PipelineRunner(spec, ctx), workdir, reports, lines)


def test_function_pipeline_runs_offline_with_cli_string_parameters(tmp_path):
    run = make_run(
        tmp_path,
        "basic:basic_pipeline",
        {"a": "2", "b": "0.25", "flag": "true", "tags": '["x", "y"]'},
        mlflow={"run_id": "run-123"},
    )
    status = run.runner.run()

    assert status.state == State.SUCCEEDED, status.message
    assert status.raw_state == "SUCCEEDED"
    total, flag, tags, mlflow_run_id, executable, python3 = status.outputs["outputs"]["Output"].split("|")
    assert (total, flag, tags) == ("2.25", "True", "x,y")
    assert mlflow_run_id == "run-123"  # the parent run, handed over because the pipeline declares it
    assert executable == sys.executable
    assert Path(python3).parent == Path(sys.executable).parent
    assert status.outputs["tasks"] == {"add": "SUCCEEDED", "describe": "SUCCEEDED"}

    assert run.reports[0].state == State.RUNNING
    assert run.reports[-1].outputs["tasks"] == {"add": "SUCCEEDED", "describe": "SUCCEEDED"}
    assert "[kubeflow-tasks] task 'describe': SUCCEEDED" in run.lines
    log = (run.workdir / "pipeline.log").read_text()
    assert "Executing task 'add'" in log and "\x1b[" not in log
    ran = (run.workdir / "kfp" / "pipeline-local.yaml").read_text()
    assert "pip install" not in ran


def test_spec_kept_inside_its_package_imports_the_package_from_any_directory(tmp_path):
    """`pkg.sub.pipe:fn` with base_dir pkg/sub (the spec file beside the pipeline) imports from the
    folder above pkg, though neither that folder nor the cwd is on the path."""
    sub = tmp_path / "project" / "pkg" / "sub"
    sub.mkdir(parents=True)
    (sub.parent / "__init__.py").write_text("")
    (sub / "__init__.py").write_text("")
    (sub / "pipe.py").write_text((PIPELINES / "basic.py").read_text())
    spec = PipelineRunSpec(
        name="t", pipeline="pkg.sub.pipe:basic_pipeline", base_dir=str(sub), parameters={"a": 1}
    )

    status = runner_for(tmp_path, spec).runner.run()

    assert status.state == State.SUCCEEDED, status.message
    assert status.outputs["outputs"]["Output"].startswith("1.5|False||")


def test_compiled_yaml_pipeline_runs_and_returns_artifact_paths(tmp_path):
    run = make_run(tmp_path, COMPILED.name, {"name": "kfp", "times": "2"})
    status = run.runner.run()

    assert status.state == State.SUCCEEDED, status.message
    note = Path(status.outputs["outputs"]["Output"])
    assert note.is_relative_to(run.workdir / "outputs")
    assert note.read_text() == "hello kfp hello kfp"


def test_rewrite_keeps_exactly_what_ran_after_the_install():
    ir = yaml.safe_load(COMPILED.read_text())
    before = {label: e["container"]["command"] for label, e in ir["deploymentSpec"]["executors"].items()}
    assert all("pip install" in command[2] for command in before.values())

    rewrite_executors(ir)

    for label, executor in ir["deploymentSpec"]["executors"].items():
        assert executor["container"]["command"] == before[label][3:]
        assert executor["container"]["command"][:2] == ["sh", "-ec"]
    assert "pip install" not in json.dumps(ir)


def install_wrapped(packages: str) -> dict:
    """A one-executor IR whose command is kfp's install wrapper (as component_factory writes it)."""
    script = (
        '\nif ! [ -x "$(command -v pip)" ]; then\n    python3 -m ensurepip || apt-get install python3-pip\nfi\n\n'
        "PIP_DISABLE_PIP_VERSION_CHECK=1 python3 -m pip install --quiet --no-warn-script-location "
        f"--index-url https://example.invalid/simple --trusted-host https://example.invalid {packages}"
        "  &&  python3 -m pip install --quiet --no-warn-script-location 'kfp==2.0.0' '--no-deps' "
        '\'typing-extensions>=3.7.4,<5; python_version<"3.9"\' && "$0" "$@"\n'
    )
    command = ["sh", "-c", script, "sh", "-ec", "run", "code"]
    return {
        "components": {"comp-fit": {"executorLabel": "exec-fit"}},
        "deploymentSpec": {"executors": {"exec-fit": {"container": {"command": command}}}},
    }


def test_installed_packages_pass_and_a_version_mismatch_only_warns(capsys):
    ir = install_wrapped("'numpy' 'pyyaml>=6' 'mlflow==0.0.1'")
    rewrite_executors(ir)
    assert ir["deploymentSpec"]["executors"]["exec-fit"]["container"]["command"] == [
        "sh",
        "-ec",
        "run",
        "code",
    ]
    assert "component 'fit' asks for 'mlflow==0.0.1'" in capsys.readouterr().out


def test_a_missing_package_is_named_with_its_component():
    with pytest.raises(
        SpecError, match=r"^components.fit: package 'no-such-dist' \(packages_to_install\) is not"
    ):
        rewrite_executors(install_wrapped("'numpy' 'no-such-dist'"))


def test_component_needing_a_missing_package_fails_before_running(tmp_path):
    status = make_run(tmp_path, "missing_package:missing_package_pipeline").runner.run()

    assert status.state == State.FAILED
    assert status.message.startswith("components.fit: package 'kubeflow-tasks-no-such-package>=1'")
    assert "not installed" in status.message
    assert status.outputs["exit_code"] == 2
    assert status.outputs["tasks"] == {}


def test_failing_component_reports_its_real_exception(tmp_path):
    run = make_run(tmp_path, "failing:failing_pipeline")
    status = run.runner.run()

    assert status.state == State.FAILED
    assert status.raw_state == "FAILED"
    assert status.message == "task 'train': ValueError: learning_rate must be positive"
    assert status.outputs["tasks"] == {"prepare": "SUCCEEDED", "train": "FAILED"}
    assert "[kubeflow-tasks] task 'train': FAILED" in run.lines


def test_bad_parameter_fails_before_running_naming_the_parameter(tmp_path):
    status = make_run(tmp_path, "basic:basic_pipeline", {"a": "two"}).runner.run()

    assert status.state == State.FAILED
    assert status.message == "parameters.a: expected an integer, got 'two'"
    assert status.outputs == {"tasks": {}, "exit_code": 2}


def test_unknown_pipeline_module_fails_before_running(tmp_path):
    status = make_run(tmp_path, "no_such_module:pipeline").runner.run()

    assert status.state == State.FAILED
    assert status.message.startswith("pipeline: cannot import 'no_such_module'")
    assert status.outputs["exit_code"] == 2


def test_a_yaml_that_is_not_a_compiled_pipeline_is_rejected(tmp_path):
    (tmp_path / "run.yaml").write_text("kind: PipelineRun\n")
    with pytest.raises(SpecError, match=r"run.yaml: not a compiled KFP pipeline"):
        load_ir("run.yaml", str(tmp_path), str(tmp_path))


IR = {
    "root": {
        "inputDefinitions": {
            "parameters": {
                "n": {"parameterType": "NUMBER_INTEGER"},
                "lr": {"parameterType": "NUMBER_DOUBLE", "defaultValue": 0.1, "isOptional": True},
                "on": {"parameterType": "BOOLEAN", "defaultValue": False, "isOptional": True},
                "name": {"parameterType": "STRING", "defaultValue": "", "isOptional": True},
                "xs": {"parameterType": "LIST", "defaultValue": [], "isOptional": True},
                "cfg": {"parameterType": "STRUCT", "defaultValue": {}, "isOptional": True},
                "mlflow_run_id": {"parameterType": "STRING", "defaultValue": "", "isOptional": True},
            }
        }
    }
}


def test_parameters_are_coerced_to_the_declared_types():
    given = {"n": "3", "lr": "1e-3", "on": "False", "name": 5, "xs": "[1, 2]", "cfg": '{"a": 1}'}
    assert pipeline_arguments(IR, given, {}) == {
        "n": 3,
        "lr": 0.001,
        "on": False,
        "name": "5",
        "xs": [1, 2],
        "cfg": {"a": 1},
    }
    yaml_values = {"n": 4.0, "lr": 2, "on": True, "xs": ["a"], "cfg": {"b": [1]}}
    assert pipeline_arguments(IR, yaml_values, {}) == {
        "n": 4,
        "lr": 2.0,
        "on": True,
        "xs": ["a"],
        "cfg": {"b": [1]},
    }


def test_mlflow_run_id_comes_from_the_environment_unless_given():
    env = {"MLFLOW_RUN_ID": "abc", "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"}
    assert pipeline_arguments(IR, {"n": 1}, env) == {"n": 1, "mlflow_run_id": "abc"}
    assert pipeline_arguments(IR, {"n": 1, "mlflow_run_id": "mine"}, env)["mlflow_run_id"] == "mine"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"n": 1, "nope": 1}, "parameters.nope: the pipeline has no such parameter"),
        ({"n": "1.5"}, "parameters.n: expected an integer, got '1.5'"),
        ({"n": True}, "parameters.n: expected an integer, got True"),
        ({"n": 1, "lr": "fast"}, "parameters.lr: expected a number, got 'fast'"),
        ({"n": 1, "on": "maybe"}, "parameters.on: expected true or false, got 'maybe'"),
        ({"n": 1, "xs": "{}"}, "parameters.xs: expected a list"),
        ({"n": 1, "cfg": "[1]"}, "parameters.cfg: expected a mapping"),
        ({"n": 1, "name": {"a": 1}}, "parameters.name: expected a string"),
        ({}, "parameters.n: required by the pipeline, but not given"),
    ],
)
def test_bad_parameters_are_one_line_errors_naming_the_parameter(given, message):
    with pytest.raises(SpecError) as error:
        pipeline_arguments(IR, given, {})
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_stop_during_a_long_component_kills_the_whole_group(tmp_path):
    marker = tmp_path / "started"
    run = make_run(tmp_path, "slow:slow_pipeline", {"marker": str(marker)})
    result: list[Status] = []
    thread = threading.Thread(target=lambda: result.append(run.runner.run()))
    thread.start()

    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline, "the component never started"
        assert thread.is_alive(), f"the run ended early: {result}"
        time.sleep(0.05)
    task_pid = int(marker.read_text())
    group = os.getpgid(task_pid)
    assert group != os.getpgid(0)  # the task runs in the run's own process group

    run.runner.stop()
    thread.join(timeout=15)

    assert not thread.is_alive()
    assert result[0].state == State.CANCELLED
    assert not procs.group_alive(group)
    assert not procs.pid_alive(task_pid)
    assert not any((run.workdir / "procs").iterdir())


def test_demo_pipeline_writes_prices_and_logs_a_finite_rmse_to_mlflow(tmp_path):
    from mlflow import MlflowClient

    from dags.commodity.data import write_prices_csv

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    mlflow_run = client.create_run(client.create_experiment("commodity"))
    data_path = tmp_path / "data" / "prices.csv"
    spec = load_spec(
        REPO / "dags" / "commodity" / "pipeline_run.yaml",
        params={"data_path": str(data_path), "n_days": "400"},
    )
    run = runner_for(
        tmp_path, spec, env={"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_RUN_ID": mlflow_run.info.run_id}
    )
    status = run.runner.run()

    assert status.state == State.SUCCEEDED, status.message
    rmse = status.outputs["outputs"]["Output"]
    assert math.isfinite(rmse) and 0 < rmse < 5
    assert status.outputs["tasks"] == {
        "prepare-data": "SUCCEEDED",
        "train": "SUCCEEDED",
        "evaluate": "SUCCEEDED",
    }
    expected = tmp_path / "expected.csv"
    assert write_prices_csv(expected, n_days=400, seed=7) == 400
    assert data_path.read_text() == expected.read_text()  # the component's copy of the generator agrees

    logged = client.get_run(mlflow_run.info.run_id)
    assert logged.data.metrics["baseline_rmse"] == pytest.approx(rmse)
    assert logged.info.status == "RUNNING"  # the task logs to the run; its owner ends it


def kfp_lines(*task_output: str, task: str = "train", status: str = "FAILURE") -> list[str]:
    """What kfp.local prints around one task, colours already stripped."""
    return [
        f"05:00:00.001 - INFO - Executing task '{task}'",
        "05:00:00.002 - INFO - Streamed logs:",
        *("    " + line for line in task_output),
        f"05:00:01.000 - ERROR - Task '{task}' finished with status {status}",
    ]


def test_task_log_takes_the_exception_that_ended_the_task():
    log = TaskLog()
    changes = [
        log.feed(line)
        for line in kfp_lines(
            "Traceback (most recent call last):",
            '  File "x.py", line 3, in train',
            "    raise KeyError('lr')",
            "KeyError: 'lr'",
            "",
            "During handling of the above exception, another exception occurred:",
            "",
            "Traceback (most recent call last):",
            '  File "x.py", line 5, in train',
            "    raise ValueError('bad lr')",
            "    ^^^^^^^^^^^^^^^^^^^^^^^^^^",
            "ValueError: bad lr",
            "",
        )
    ]
    assert [c for c in changes if c] == [("train", "RUNNING"), ("train", "FAILED")]
    assert log.failure_message() == "task 'train': ValueError: bad lr"


def test_task_log_without_a_traceback_uses_the_task_last_line():
    log = TaskLog()
    for line in kfp_lines("ERROR: No matching distribution found for numpy", ""):
        log.feed(line)
    assert log.failure_message() == "task 'train': ERROR: No matching distribution found for numpy"


def test_task_log_ignores_task_output_that_looks_like_kfp_lines():
    log = TaskLog()
    for line in kfp_lines("05:00:00.500 - INFO - Executing task 'fake'", status="SUCCESS"):
        log.feed(line)
    assert log.tasks == {"train": "SUCCEEDED"}
    assert log.failure_message() is None


@pytest.mark.e2e
def test_container_components_run_on_the_host(tmp_path):
    run = make_run(tmp_path, "container:container_pipeline", {"text": "hi"})
    status = run.runner.run()
    assert status.state == State.SUCCEEDED, status.message
    assert status.outputs["outputs"]["Output"] == 3  # "HI!" written by sh, counted in Python
    said = [line for line in run.lines if "container components run on this host" in line]
    assert len(said) == 1 and "(shout)" in said[0]


@pytest.mark.e2e
def test_a_container_component_whose_command_is_missing_here_fails_naming_it(tmp_path):
    status = make_run(tmp_path, "container:missing_pipeline").runner.run()
    assert status.state == State.FAILED
    assert "no-such-program-here" in status.message, status.message
