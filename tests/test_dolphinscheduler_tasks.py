"""DolphinScheduler task types: definitions generated offline, scripts, setValue, the worker emulation.

The definitions are generated with no Java gateway (`offline()`); the scripts run under bash through
tests/ds_harness.py, which substitutes and parses exactly as a DolphinScheduler worker does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import jsonschema
import pytest

from dolphinscheduler_tasks import (
    KatibExperiment,
    KubeflowPipeline,
    PyTorchJob,
    Summary,
    TFJob,
    load_yaml_workflow,
    offline,
)
from dolphinscheduler_tasks.script import ScriptWriter, cli_deadline_seconds
from shared.errors import SpecError
from shared.setvalue import safe_value, setvalue_lines
from tests.ds_harness import OutputParser, Worker, substitute

REPO = Path(__file__).resolve().parents[1]
COMMODITY = REPO / "dags" / "commodity"
NIGHTLY_YAML = REPO / "dags" / "dolphinscheduler" / "commodity_nightly.yaml"

# DolphinScheduler's TaskDefinition JSON (dao/entity/TaskDefinition.java) as the API accepts it for a SHELL task.
PROPERTY = {
    "type": "object",
    "required": ["prop", "direct", "type", "value"],
    "properties": {
        "prop": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "direct": {"enum": ["IN", "OUT"]},
        "type": {"enum": ["VARCHAR", "INTEGER", "LONG", "FLOAT", "DOUBLE", "DATE", "TIME", "TIMESTAMP",
                          "BOOLEAN", "LIST", "FILE"]},
        "value": {"type": "string"},
    },
}
SHELL_TASK = {
    "type": "object",
    "required": ["code", "version", "name", "taskType", "taskParams", "failRetryTimes", "failRetryInterval",
                 "timeoutFlag", "timeoutNotifyStrategy", "timeout", "flag", "isCache", "taskPriority",
                 "workerGroup", "taskExecuteType", "cpuQuota", "memoryMax", "delayTime"],
    "properties": {
        "code": {"type": "integer", "minimum": 1},
        "version": {"type": "integer", "minimum": 1},
        "name": {"type": "string", "minLength": 1},
        "taskType": {"const": "SHELL"},
        "taskExecuteType": {"const": "BATCH"},
        "taskParams": {
            "type": "object",
            "required": ["rawScript", "localParams", "resourceList"],
            "properties": {
                "rawScript": {"type": "string", "minLength": 1},
                "localParams": {"type": "array", "items": PROPERTY},
                "resourceList": {"type": "array"},
            },
        },
        "failRetryTimes": {"type": "integer", "minimum": 0},
        "failRetryInterval": {"type": "integer", "minimum": 0},
        "timeoutFlag": {"enum": ["OPEN", "CLOSE"]},
        "timeoutNotifyStrategy": {"enum": ["WARN", "FAILED", "WARNFAILED", None]},
        "timeout": {"type": "integer", "minimum": 0},
        "flag": {"enum": ["YES", "NO"]},
        "isCache": {"enum": ["YES", "NO"]},
        "taskPriority": {"enum": ["HIGHEST", "HIGH", "MEDIUM", "LOW", "LOWEST"]},
    },
}


def nightly_python():
    from dags.dolphinscheduler.commodity_nightly import build_workflow

    with offline():
        return build_workflow()


def nightly_yaml(monkeypatch):
    monkeypatch.chdir(REPO)  # the YAML's spec paths are relative to where one submits from
    with offline():
        return load_yaml_workflow(NIGHTLY_YAML)


# ---------------------------------------------------------------------------- definitions


def test_nightly_workflow_generates_offline_as_valid_shell_tasks():
    workflow = nightly_python()
    tasks = workflow.task_definition_json
    assert [t["name"] for t in tasks] == ["prepare", "tune", "train", "promote", "summary"]
    for task in tasks:
        jsonschema.validate(task, SHELL_TASK)
    by_name = {t["name"]: t for t in tasks}
    relations = {(r["preTaskCode"], r["postTaskCode"]) for r in workflow.task_relation_json}
    codes = [by_name[n]["code"] for n in ("prepare", "tune", "train", "promote", "summary")]
    assert relations == {(0, codes[0]), *zip(codes, codes[1:], strict=False)}
    assert workflow.schedule == "0 0 2 * * ? *"  # daily at 02:00
    assert workflow.param_json == [
        {"prop": "data_root", "direct": "IN", "type": "VARCHAR", "value": "/tmp/kubeflow-tasks/commodity"}
    ]

    tune = by_name["tune"]
    outs = [p["prop"] for p in tune["taskParams"]["localParams"] if p["direct"] == "OUT"]
    assert outs == ["id", "name", "state", "url", "mlflow_run_id", "best_parameters", "best_learning_rate",
                    "best_num_estimators", "best_metrics"]
    assert all(p["type"] == "VARCHAR" for p in tune["taskParams"]["localParams"])
    assert (tune["failRetryTimes"], tune["failRetryInterval"]) == (2, 5)
    assert (tune["timeoutFlag"], tune["timeout"], tune["timeoutNotifyStrategy"]) == ("OPEN", 120, "FAILED")
    script = tune["taskParams"]["rawScript"]
    assert "exec kubeflow-tasks run experiment" in script
    assert f"--timeout {cli_deadline_seconds(120)}s" in script and cli_deadline_seconds(120) < 120 * 60
    assert "dolphinscheduler/${system.workflow.instance.id}/${system.task.definition.code}" in script
    promote = by_name["promote"]
    outs = [p["prop"] for p in promote["taskParams"]["localParams"] if p["direct"] == "OUT"]
    assert {"model_version", "decision", "champion_version"} <= set(outs)
    script = promote["taskParams"]["rawScript"]
    assert "exec kubeflow-tasks promote" in script and "--output setvalue" in script
    assert "dolphinscheduler/${system.workflow.instance.id}/${system.task.definition.code}" in script
    assert f"cd {COMMODITY}" in script
    # Generating again gives the same definitions, so submitting an unchanged workflow stores no new
    # task version: the codes (offline: from the names) and the scripts, here-document delimiters included.
    assert nightly_python().task_definition_json == tasks
    assert re.search(r"<<'KFT_[0-9a-f]{24}'", script)


def test_yaml_workflow_resolves_our_task_types_and_equals_the_python_one(monkeypatch):
    from_yaml = nightly_yaml(monkeypatch)
    from_python = nightly_python()
    assert from_yaml.schedule == from_python.schedule
    assert from_yaml.param_json == from_python.param_json
    assert from_yaml.task_definition_json == from_python.task_definition_json  # byte for byte
    key = lambda r: (r["preTaskCode"], r["postTaskCode"])  # noqa: E731
    assert sorted(map(key, from_yaml.task_relation_json)) == sorted(map(key, from_python.task_relation_json))


def test_define_command_prints_the_yaml_workflow_without_a_gateway():
    proc = subprocess.run(
        [sys.executable, "-m", "dolphinscheduler_tasks", str(NIGHTLY_YAML.relative_to(REPO)), "--define"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    define = json.loads(proc.stdout)
    assert [t["taskType"] for t in define["taskDefinitionJson"]] == ["SHELL"] * 5
    assert "Traceback" not in proc.stderr  # the gateway probe at import stays quiet


def test_task_types_check_their_spec_when_defined(tmp_path):
    with offline():
        with pytest.raises(SpecError, match=r"^kind: "):
            KatibExperiment(name="x", spec=COMMODITY / "pytorchjob.yaml", params={"data_path": "d"})
        with pytest.raises(SpecError, match=r"^kind: TFJob needs a TFJob manifest, got 'PyTorchJob'"):
            TFJob(name="x", spec=COMMODITY / "pytorchjob.yaml",
                  params={"data_path": "d", "learning_rate": "1", "num_estimators": "2"})
        with pytest.raises(SpecError, match=r"command\[3\]: unknown parameter 'data_path'"):
            PyTorchJob(name="x", spec=COMMODITY / "pytorchjob.yaml")
        with pytest.raises(SpecError, match=r"^params: 'bad name' is not a parameter name"):
            KubeflowPipeline(name="x", spec=COMMODITY / "pipeline_run.yaml", params={"bad name": "1"})
        with pytest.raises(SpecError, match=r"^mlflow_tracking_uri: holds a password"):
            KubeflowPipeline(name="x", spec=COMMODITY / "pipeline_run.yaml",
                             mlflow_tracking_uri="https://me:secret@mlflow.example")


def test_timeout_strategy_decides_whether_the_cli_has_its_own_deadline():
    with offline():
        failed = KubeflowPipeline(name="a", spec=COMMODITY / "pipeline_run.yaml", timeout=timedelta(minutes=10))
        warn = KubeflowPipeline(name="b", spec=COMMODITY / "pipeline_run.yaml", timeout=10,
                                timeout_notify_strategy="WARN")
        none = KubeflowPipeline(name="c", spec=COMMODITY / "pipeline_run.yaml")
    assert failed.get_define()["timeoutNotifyStrategy"] == "FAILED"
    assert "--timeout 525s" in failed.get_define()["taskParams"]["rawScript"]  # 75 s (a whole cancel) before the kill
    assert "--timeout" not in warn.get_define()["taskParams"]["rawScript"]  # WARN never kills
    assert none.get_define()["timeoutFlag"] == "CLOSE"
    assert "--timeout" not in none.get_define()["taskParams"]["rawScript"]
    assert cli_deadline_seconds(1) == 30 and cli_deadline_seconds(60) == 3600 - 180
    assert cli_deadline_seconds(600) == 600 * 60 - 300


def test_cluster_options_reach_the_cli_and_a_dict_spec_is_embedded(tmp_path):
    manifest = json.loads(json.dumps(__import__("yaml").safe_load((COMMODITY / "experiment.yaml").read_text())))
    with offline():
        task = KatibExperiment(
            name="k8s", spec=manifest, params={"data_path": "/data/prices.csv"}, backend="kubernetes",
            namespace="team-a", kubeconfig="/etc/kube/config", kfp_host="https://kfp.example",
            mlflow_tracking_uri="http://mlflow:5000",
        )
    script = task.get_define()["taskParams"]["rawScript"]
    for expected in ("--backend kubernetes", "--namespace team-a", "--kubeconfig /etc/kube/config",
                     "--kfp-host https://kfp.example", "--mlflow-tracking-uri http://mlflow:5000",
                     "> kubeflow-tasks-spec.json", "--spec kubeflow-tasks-spec.json"):
        assert expected in script


def test_registration_makes_the_classes_pydolphinscheduler_task_types():
    from pydolphinscheduler import tasks
    from pydolphinscheduler.core.yaml_workflow import get_task_cls

    for cls in (KubeflowPipeline, KatibExperiment, PyTorchJob, TFJob, Summary):
        assert get_task_cls(cls.__name__) is cls and cls.__name__ in tasks.__all__
    assert get_task_cls("katibexperiment") is KatibExperiment
    assert get_task_cls("Pytorch") is tasks.Pytorch  # the SDK's own types still resolve


def test_importing_the_task_types_imports_no_heavy_sdk():
    code = (
        "import sys, dolphinscheduler_tasks\n"
        "print([m for m in ('kfp', 'kubernetes', 'mlflow', 'optuna', 'torch') if m in sys.modules])"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


# ---------------------------------------------------------------------------- scripts and setValue


EVIL = "a'b\"c `touch {f}` $(touch {f}) ${{setValue(x=y)}} #{{setValue(state=OWNED)}} )}}\nline2 KFT_0\n"


def test_here_document_values_survive_substitution_exactly(tmp_path):
    """Each value, as DolphinScheduler substitutes it, is read back by bash byte for byte."""
    victim = tmp_path / "executed"
    values = [EVIL.format(f=victim), "", "\n", "trailing\n\n", "plain-value_1.0", "\\n \\ $HOME ~ * ?"]
    writer = ScriptWriter()
    words = [writer.value(f"${{v{i}}}") for i in range(len(values))]
    script = writer.render("t", ["printf '%s\\0'", *words], exec_=False)
    text = substitute(script, {f"v{i}": v for i, v in enumerate(values)})
    out = subprocess.run(["bash", "-c", text], capture_output=True, timeout=30, cwd=tmp_path).stdout
    assert out.decode().split("\0")[:-1] == values
    assert not victim.exists()


def test_the_delimiter_is_derived_from_the_values():
    writers = [ScriptWriter() for _ in range(3)]
    for writer, value in zip(writers, ["a value", "a value", "another value"], strict=True):
        writer.read(value)
    assert writers[0].delimiter() == writers[1].delimiter() != writers[2].delimiter()
    assert writers[0].render("t", ["echo"]) == writers[1].render("t", ["echo"])


def test_setvalue_lines_cannot_break_or_inject(tmp_path):
    hostile = "v1\n${setValue(state=OWNED)}\r\n#{x} $[yyyyMMdd] )} end"
    result = {"id": hostile, "state": "SUCCEEDED", "url": None,
              "outputs": {"best_parameters": {"lr": hostile, "n": 3}, "best_metrics": {"rmse": 0.5}}}
    names = ["id", "name", "state", "url", "mlflow_run_id", "best_parameters", "best_lr", "best_n", "best_metrics"]
    lines = list(setvalue_lines(result, names))
    parser = OutputParser()
    for line in lines:
        assert "\n" not in line and "\r" not in line
        parser.feed(line)
    assert set(parser.params) == {"id", "state", "best_parameters", "best_lr", "best_n", "best_metrics"}
    assert parser.params["state"] == "SUCCEEDED" and parser.params["best_n"] == "3"
    assert parser.params["id"] == safe_value(hostile) == "v1 $ {setValue(state=OWNED) } # {x} $ [yyyyMMdd] ) } end"
    assert json.loads(parser.params["best_metrics"]) == {"rmse": 0.5}
    # Downstream, the value is substituted as text: it must not expand into anything.
    assert substitute("${id}", {**parser.params, "x": "X", "state": "S"}) == parser.params["id"]
    assert list(setvalue_lines({"id": "1", "extra": "2"}, ["id"])) == ["${setValue(id=1)}"]


def test_the_harness_parses_and_substitutes_like_dolphinscheduler():
    parser = OutputParser()
    for line in ["x ${setValue(a=1=2)} y #{setValue(b= v )}", "${setValue(c=multi", "line)} ${setValue(d=4)}",
                 "#{setValue(noequals)}"]:
        parser.feed(line)
    assert parser.params == {"a": "1=2", "b": " v ", "c": "multi\nline", "d": "4"}
    params = {"a": "${b}", "b": "B", "n": "a", "loop": "${loop}"}
    assert substitute("${a}-${${n}}-${unknown}-${!1%$'\\n'}", params) == "B-B-${unknown}-${!1%$'\\n'}"
    with pytest.raises(ValueError, match="Circular"):
        substitute("${loop}", params)


def test_summary_task_prints_upstream_values_as_data(tmp_path):
    victim = tmp_path / "executed"
    with offline():
        task = Summary(name="summary", rows={"best": "${best_parameters}", "state": "${state}"})
    worker = Worker(tmp_path / "worker", env={"PATH": "/usr/bin:/bin"})
    result = worker.run(task.get_define(), {"best_parameters": EVIL.format(f=victim), "state": "SUCCEEDED"})
    assert result.state == "SUCCESS", result.log
    assert result.log.startswith("best: " + EVIL.format(f=victim)) and "state: SUCCEEDED" in result.log
    assert not victim.exists()
