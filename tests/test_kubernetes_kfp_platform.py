"""A kfp-kubernetes pipeline on the Kubernetes backend: the platform spec goes to the KFP server with
the run, as kfp's client sends it (`pipeline_spec: {pipeline_spec, platform_spec}`), against the
wire-level double."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml

from shared.backends.base import SubmitContext
from shared.specs import load_spec
from shared.status import State

SECRET_AS_ENV = "pipelines@2.17.0/kubernetes_platform/python/test/snapshot/data/secret_as_env.yaml"


def _backend(double, tmp_path: Path):
    from shared.backends.kubernetes import KubernetesBackend

    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig")
    return KubernetesBackend(
        kubeconfig=str(kubeconfig), kfp_host=double.kfp_url, kfp_token=double.kfp_token, kfp_poll_interval=0.2
    )


def test_secret_as_env_and_node_selector_reach_the_server(conformance: Path, k8s_double, tmp_path: Path) -> None:
    pipeline, platform = [d for d in yaml.safe_load_all((conformance / SECRET_AS_ENV).read_text()) if d]
    executor = next(iter(platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()))
    executor["nodeSelector"] = {"labels": {"disktype": "ssd"}}  # the upstream file, plus a node selector
    path = tmp_path / "secret_and_node_selector.yaml"
    path.write_text(yaml.safe_dump_all([pipeline, platform], sort_keys=False))

    backend = _backend(k8s_double, tmp_path)
    handle = backend.submit(load_spec(path), "platform/secret", 1, SubmitContext())

    async def until_terminal():
        async for _, status in backend.watch([handle]):
            if status.terminal:
                return status

    status = asyncio.run(asyncio.wait_for(until_terminal(), 30))
    assert status.state is State.SUCCEEDED, status
    [run] = [r for r in k8s_double.runs() if r["display_name"] == handle.name or handle.id.endswith(r["run_id"])]
    sent = run["pipeline_spec"]
    assert set(sent) == {"pipeline_spec", "platform_spec"}
    assert sent["pipeline_spec"]["pipelineInfo"] == pipeline["pipelineInfo"]
    sent_executor = next(iter(sent["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values()))
    assert sent_executor["secretAsEnv"] == executor["secretAsEnv"]
    assert sent_executor["nodeSelector"] == {"labels": {"disktype": "ssd"}}
