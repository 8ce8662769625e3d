"""One conversion of parameter values for every adapter (issue 10, item 6).

Airflow used `str()` (a dict became `{'a': 1}`, which no pipeline parses), DolphinScheduler
`json.dumps`; both now use `shared.params.to_text`, and a pipeline's typed inputs read the text back.
"""

from __future__ import annotations

import pytest

from airflow_provider.specs import resolve_spec
from shared.backends.local.kfp_exec import coerce
from shared.params import to_text
from shared.status import Kind

JOB = {
    "apiVersion": "kubeflow.org/v1",
    "kind": "PyTorchJob",
    "metadata": {"name": "typed"},
    "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "pytorch", "image": "i", "command": ["python", "t.py", "--x=${params.x}"]}]}}}}},
}
VALUES = [({"a": 1}, '{"a": 1}'), ([1, 2], "[1, 2]"), (True, "true"), (3, "3"), (0.5, "0.5"), ("text", "text")]


@pytest.mark.parametrize("value, text", VALUES, ids=[t for _, t in VALUES])
def test_both_adapters_turn_a_value_into_the_same_text(tmp_path, value, text):
    from dolphinscheduler_tasks import PyTorchJob, offline

    airflow = resolve_spec(Kind.TRAINING_JOB, JOB, params={"x": value}, name=None, base_dir=str(tmp_path))
    command = airflow.manifest["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["command"]
    assert command[-1] == f"--x={text}"
    with offline():
        task = PyTorchJob(name="typed", spec=JOB, params={"x": value})
    script = task.raw_script  # plain values inline, others in a quoted here-document
    assert f"--param x={text} " in script or f"\nx={text}\n" in script, script


@pytest.mark.parametrize(
    "value, parameter_type", [({"a": 1}, "STRUCT"), ([1, 2], "LIST"), (True, "BOOLEAN"), (0.5, "NUMBER_DOUBLE"), (3, "NUMBER_INTEGER")]
)
def test_the_text_reaches_a_pipeline_as_its_kfp_type(value, parameter_type):
    assert coerce("parameters.p", parameter_type, to_text(value)) == value
