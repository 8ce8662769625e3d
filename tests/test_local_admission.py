"""Valid for the cluster, not runnable here: the local backend refuses at submit, one line, exit 2.

The manifests are the upstream examples (`../shared/conformance`), which the spec layer accepts;
each refusal names the field, says what is missing on this machine and that the cluster runs it,
and nothing is created in the local state directory.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from shared.cli import main

KATIB = "katib@v0.19.0/examples/v1beta1"
KFP_K8S = "pipelines@2.17.0/kubernetes_platform/python/test/snapshot/data"
CASES = [
    # (id, kind, corpus file, edit, field)
    ("nas-darts", "experiment", f"{KATIB}/nas/darts-cpu.yaml", None, "spec.nasConfig"),
    ("nas-enas", "experiment", f"{KATIB}/nas/enas-cpu.yaml", None, "spec.nasConfig"),
    ("pbt", "experiment", f"{KATIB}/hp-tuning/simple-pbt.yaml",
     lambda d: d["spec"].update(maxFailedTrialCount=1), "spec.algorithm.algorithmName"),
    ("config-map-template", "experiment", f"{KATIB}/trial-template/trial-configmap-source.yaml", None,
     "spec.trialTemplate.configMap"),
    ("custom-collector", "experiment", f"{KATIB}/metrics-collector/custom-metrics-collector.yaml", None,
     "spec.metricsCollectorSpec.collector.kind"),
    ("argo-trial", "experiment", f"{KATIB}/argo/argo-workflow.yaml", None, "spec.trialTemplate.trialSpec.kind"),
    ("trainjob-trial", "experiment", f"{KATIB}/kubeflow-trainer/trainjob-pytorch.yaml", None,
     "spec.trialTemplate.trialSpec.kind"),
    ("args-only-trial", "experiment", f"{KATIB}/hp-tuning/random.yaml",
     lambda d: _job_container(d).update(args=_job_container(d).pop("command")),
     "spec.trialTemplate.trialSpec.spec.template.spec.containers[0].command"),
    ("args-only-replica", "training-job", "trainer@v1.9.4/examples/pytorch/simple.yaml",
     lambda d: _master(d).update(args=_master(d).pop("command")),
     "spec.pytorchReplicaSpecs.Master.template.spec.containers[0].command"),
    ("secret-as-env", "pipeline", f"{KFP_K8S}/secret_as_env.yaml", None,
     "platforms.kubernetes.deploymentSpec.executors.exec-comp.secretAsEnv"),
    ("config-map-as-volume", "pipeline", f"{KFP_K8S}/config_map_as_vol.yaml", None,
     "platforms.kubernetes.deploymentSpec.executors.exec-comp.configMapAsVolume"),
    ("pvc-mount", "pipeline", f"{KFP_K8S}/create_mount_delete_existing_pvc.yaml", None,
     "platforms.kubernetes.deploymentSpec.executors.exec-comp.pvcMount"),
]


def _job_container(doc: dict) -> dict:
    return doc["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]


def _master(doc: dict) -> dict:
    return doc["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(("kind", "name", "edit", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_at_submit_with_one_line(
    conformance: Path, tmp_path: Path, state_dir: Path, capsys, kind, name, edit, field
) -> None:
    source = conformance / name
    spec_file = source
    if edit is not None:
        doc = copy.deepcopy(yaml.safe_load(source.read_text()))
        edit(doc)
        spec_file = tmp_path / "spec.yaml"
        spec_file.write_text(yaml.safe_dump(doc))
    code = main(["run", kind, "--spec", str(spec_file), "--key", "k"])
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1, captured.err
    assert f"{field}: " in lines[0], lines[0]
    assert "Kubernetes backend runs it" in lines[0]
    assert not (state_dir / "runs").exists(), "nothing may be started for what cannot run here"


def test_the_same_manifests_pass_the_spec_layer(conformance: Path) -> None:
    """The refusals above are the local backend's, not verdicts on the manifests."""
    from shared.specs import load_spec

    for _, _, name, edit, _ in CASES:
        if edit is None:
            load_spec(conformance / name)
