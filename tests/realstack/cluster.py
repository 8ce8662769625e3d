"""The real Kubernetes side of the test stack: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler, kwok and the Kubeflow training operator with its validating webhook, all on loopback.

What is real: the API server (schemas, defaulting, admission, dry runs, watches, 410 after
compaction, RBAC), garbage collection and foreground deletion (the controller manager), binding (the
scheduler), and the training operator's controllers and webhook. What is fake: the nodes and the
pods' lifecycle, played by kwok from `kwok-stages.yaml`.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import ssl
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from . import certs, processes
from .build import testenv_dir

NAMESPACE = "kubeflow-tasks-test"
OPERATOR_NAMESPACE = "kubeflow"
WEBHOOK_CONFIGURATION = "validator.training-operator.kubeflow.org"  # the name the operator's rotator manages
WEBHOOK_SECRET = "training-operator-webhook-cert"
WEBHOOK_DNS = f"training-operator.{OPERATOR_NAMESPACE}.svc"
NODES = ("kwok-node-0", "kwok-node-1")
OPERATOR_CERT_DIR = "/tmp/k8s-webhook-server/serving-certs"  # fixed in the operator (pkg/cert)
STAGES = Path(__file__).resolve().parent / "kwok-stages.yaml"


def _https_get(url: str, ca: Path, token: str, timeout: float = 5) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def _http_get(url: str, timeout: float = 5) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


def write_kubeconfig(path: Path, server: str, ca_pem: bytes, token: str, namespace: str) -> Path:
    config = {
        "apiVersion": "v1", "kind": "Config", "current-context": "realstack",
        "clusters": [{"name": "realstack", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "realstack", "context": {"cluster": "realstack", "user": "admin",
                                                        "namespace": namespace}}],
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def start(workdir: Path) -> tuple[dict[str, Any], list[processes.Started]]:
    """Start the control plane and the operator; return the state entries and what was started.

    On failure everything started so far is stopped before the error propagates.
    """
    root = testenv_dir()
    bin_dir = root / "bin"
    missing = [b for b in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok",
                           "training-operator.v1") if not (bin_dir / b).exists()]
    if missing:
        raise RuntimeError(f"the test stack is not built ({', '.join(missing)} missing in {bin_dir}): "
                           "run `make testenv`")
    started: list[processes.Started] = []
    try:
        state = _start(workdir, bin_dir, root, started)
    except BaseException:
        for s in reversed(started):
            processes.stop(s)
        raise
    return state, started


def _start(workdir: Path, bin_dir: Path, root: Path, started: list[processes.Started]) -> dict[str, Any]:
    pki = workdir / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    stack_certs = certs.make_stack_certs(WEBHOOK_DNS, "training-operator-ca", "training-operator")
    ca = certs.write(pki / "ca.crt", stack_certs.ca.cert)
    certs.write(pki / "apiserver.crt", stack_certs.apiserver.cert)
    certs.write(pki / "apiserver.key", stack_certs.apiserver.key)
    certs.write(pki / "sa.key", stack_certs.service_account_key)
    certs.write(pki / "sa.pub", stack_certs.service_account_pub)
    token = secrets.token_urlsafe(24)
    certs.write(pki / "tokens.csv", f'{token},admin,admin-uid,"system:masters"\n'.encode())

    # etcd
    etcd_port, peer_port = processes.free_port(), processes.free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    proc, etcd = processes.start("etcd", [
        str(bin_dir / "etcd"), "--name", "realstack", "--data-dir", str(workdir / "etcd"),
        "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
        "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
        "--initial-cluster", f"realstack=http://127.0.0.1:{peer_port}",
        "--unsafe-no-fsync", "--log-level", "warn",
    ], logs)
    started.append(etcd)
    processes.wait_ready("etcd", lambda: '"true"' in _http_get(f"{etcd_url}/health")[1], etcd, 60)

    # kube-apiserver
    api_port = processes.free_port()
    server = f"https://127.0.0.1:{api_port}"
    apiserver_cmd = [
        str(bin_dir / "kube-apiserver"), "--etcd-servers", etcd_url,
        "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", str(api_port),
        "--tls-cert-file", str(pki / "apiserver.crt"), "--tls-private-key-file", str(pki / "apiserver.key"),
        "--client-ca-file", str(ca),
        "--service-account-issuer", server, "--service-account-key-file", str(pki / "sa.pub"),
        "--service-account-signing-key-file", str(pki / "sa.key"),
        "--service-cluster-ip-range", "10.96.0.0/16", "--authorization-mode", "Node,RBAC",
        "--token-auth-file", str(pki / "tokens.csv"), "--endpoint-reconciler-type", "none",
        "--allow-privileged", "--disable-admission-plugins", "ServiceAccount",
        # Compaction is the tests' to force (410 Gone on watch resume), not a timer's.
        "--etcd-compaction-interval", "0", "--profiling=false",
    ]
    proc, apiserver = processes.start("kube-apiserver", apiserver_cmd, logs)
    started.append(apiserver)
    processes.wait_ready("kube-apiserver", lambda: _https_get(f"{server}/readyz", ca, token)[0] == 200,
                         apiserver, 120)
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", server, stack_certs.ca.cert, token, NAMESPACE)

    # The CRDs before the controller manager: its garbage collector reads the deletable resources from
    # discovery when it starts and then only every 30 s (hard-coded in kube-controller-manager), and
    # until it watches a kind, a foreground delete of such an object waits (measured: 14 s for the
    # first PyTorchJob of a stack whose CRDs came after it; 0.2 s from then on, and from the first
    # with this order). A real cluster has its CRDs long before anyone deletes a job.
    _install_crds(root, kubeconfig, apiserver)

    # controller manager (garbage collection, namespaces, jobs) and scheduler (binding)
    _, kcm = processes.start("kube-controller-manager", [
        str(bin_dir / "kube-controller-manager"), "--kubeconfig", str(kubeconfig),
        "--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "0",
        "--service-account-private-key-file", str(pki / "sa.key"), "--root-ca-file", str(ca),
        "--use-service-account-credentials=false",
        # kwok keeps no kubelet heartbeat that the node lifecycle controller would trust, and the
        # fake nodes need no pod CIDRs.
        "--controllers", "*,-node-lifecycle-controller,-node-ipam-controller",
    ], logs)
    started.append(kcm)
    _, scheduler = processes.start("kube-scheduler", [
        str(bin_dir / "kube-scheduler"), "--kubeconfig", str(kubeconfig),
        "--leader-elect=false", "--bind-address", "127.0.0.1", "--secure-port", "0",
    ], logs)
    started.append(scheduler)

    from kubernetes import client
    from kubernetes import config as kconfig

    api = kconfig.new_client_from_config(str(kubeconfig))
    core = client.CoreV1Api(api)
    for ns in (NAMESPACE, OPERATOR_NAMESPACE):
        core.create_namespace({"metadata": {"name": ns}})
    for node in NODES:
        core.create_node({"metadata": {"name": node, "annotations": {"kwok.x-k8s.io/node": "fake"},
                                       "labels": {"type": "kwok", "kubernetes.io/hostname": node}}})

    # kwok plays the nodes and pods
    _, kwok = processes.start("kwok", [
        str(bin_dir / "kwok"), "--kubeconfig", str(kubeconfig), "--config", str(STAGES),
        "--manage-all-nodes=false", "--manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake",
        "--server-address", f"127.0.0.1:{processes.free_port()}",
    ], logs)
    started.append(kwok)

    # the training operator, with our certificates pre-seeded so its webhook is callable on 127.0.0.1
    core.create_namespaced_secret(OPERATOR_NAMESPACE, {
        "metadata": {"name": WEBHOOK_SECRET},
        "data": {k: base64.b64encode(v).decode() for k, v in {
            "ca.crt": stack_certs.webhook_ca.cert, "ca.key": stack_certs.webhook_ca.key,
            "tls.crt": stack_certs.webhook.cert, "tls.key": stack_certs.webhook.key}.items()},
    })
    webhook_port, probe_port = processes.free_port(), processes.free_port()
    # The operator's cert rotator marks its certificates ready only once it has found (and injected
    # its CA into) this configuration, so it must exist before the operator starts.
    _register_webhook(api, webhook_port, stack_certs.webhook_ca.cert)
    operator_cmd = [
        str(bin_dir / "training-operator.v1"), "--kubeconfig", str(kubeconfig),
        "--metrics-bind-address", "0", "--health-probe-bind-address", f"127.0.0.1:{probe_port}",
        "--webhook-server-port", str(webhook_port),
        "--enable-scheme", "pytorchjob", "--enable-scheme", "tfjob",
    ]
    env = {"PATH": "/usr/bin:/bin", "MY_POD_NAMESPACE": OPERATOR_NAMESPACE, "HOME": str(workdir)}
    command, cert_dir = _private_cert_dir(operator_cmd, workdir)
    # In a cluster the kubelet mounts the Secret there; the rotator waits until the files match it.
    cert_dir.mkdir(parents=True, exist_ok=True)
    for name, data in {"ca.crt": stack_certs.webhook_ca.cert, "tls.crt": stack_certs.webhook.cert,
                       "tls.key": stack_certs.webhook.key}.items():
        certs.write(cert_dir / name, data)
    _, operator = processes.start("training-operator", command, logs, env=env)
    started.append(operator)
    processes.wait_ready("training-operator",
                         lambda: _http_get(f"http://127.0.0.1:{probe_port}/readyz")[0] == 200, operator, 120)
    _wait_nodes_ready(core, started)

    return {
        "kubeconfig": str(kubeconfig),
        "namespace": NAMESPACE,
        "kubernetes": {
            "server": server, "etcd": etcd_url, "ca": str(ca), "token": token,
            "apiserver_cmd": apiserver_cmd, "logs": str(logs),
            "operator_namespace": OPERATOR_NAMESPACE, "webhook_port": webhook_port,
        },
    }


def _install_crds(root: Path, kubeconfig: Path, apiserver: processes.Started) -> None:
    """Create the operator's CRDs and wait until discovery serves every one of them."""
    from kubernetes import client
    from kubernetes import config as kconfig

    api = kconfig.new_client_from_config(str(kubeconfig))
    ext = client.ApiextensionsV1Api(api)
    wanted: dict[str, set[str]] = {}
    for path in sorted((root / "crds").glob("*.yaml")):
        crd = yaml.safe_load(path.read_text())
        ext.create_custom_resource_definition(crd)
        for version in crd["spec"]["versions"]:
            if version.get("served", True):
                wanted.setdefault(f'{crd["spec"]["group"]}/{version["name"]}', set()).add(crd["spec"]["names"]["plural"])

    def discovered() -> bool:
        for group_version, plurals in wanted.items():
            found = api.call_api(f"/apis/{group_version}", "GET", response_type="object",
                                 auth_settings=["BearerToken"], _return_http_data_only=True)
            if not plurals <= {r["name"] for r in found.get("resources", [])}:
                return False
        return True

    processes.wait_ready("kube-apiserver (CRDs in discovery)", discovered, apiserver, 60)


def _private_cert_dir(cmd: list[str], workdir: Path) -> tuple[list[str], Path]:
    """The operator reads its serving certificates from a fixed path under /tmp; as root, give it a
    private mount there so stacks side by side never see each other's. Returns the command and the
    folder to put the certificates in."""
    unshare = shutil.which("unshare")
    if os.geteuid() != 0 or unshare is None:
        return cmd, Path(OPERATOR_CERT_DIR)
    private = workdir / "webhook-server"
    private.mkdir(exist_ok=True)
    mount_point = str(Path(OPERATOR_CERT_DIR).parent)
    script = f'mkdir -p {mount_point} && mount --bind "$0" {mount_point} && exec "$@"'
    command = [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", script, str(private), *cmd]
    return command, private / Path(OPERATOR_CERT_DIR).name


def _register_webhook(api, port: int, ca_pem: bytes) -> None:
    from kubernetes import client

    hooks = []
    for kind, plural in (("pytorchjob", "pytorchjobs"), ("tfjob", "tfjobs")):
        hooks.append({
            "name": f"validator.{kind}.training-operator.kubeflow.org",
            "admissionReviewVersions": ["v1"], "sideEffects": "None", "failurePolicy": "Fail",
            "clientConfig": {"url": f"https://127.0.0.1:{port}/validate-kubeflow-org-v1-{kind}",
                             "caBundle": base64.b64encode(ca_pem).decode()},
            "rules": [{"apiGroups": ["kubeflow.org"], "apiVersions": ["v1"],
                       "operations": ["CREATE", "UPDATE"], "resources": [plural]}],
        })
    client.AdmissionregistrationV1Api(api).create_validating_webhook_configuration(
        {"metadata": {"name": WEBHOOK_CONFIGURATION}, "webhooks": hooks})


def _wait_nodes_ready(core, started: list[processes.Started]) -> None:
    kwok = next(s for s in started if s.name == "kwok")

    def ready() -> bool:
        nodes = core.list_node().items
        return len(nodes) == len(NODES) and all(
            any(c.type == "Ready" and c.status == "True" for c in (n.status.conditions or [])) for n in nodes)

    processes.wait_ready("kwok (fake nodes Ready)", ready, kwok, 60)
    # The API server taints a new node not-ready; the node lifecycle controller (left out: kwok sends
    # no kubelet heartbeats it would trust) is what lifts that taint once the node is Ready.
    for node in NODES:
        core.patch_node(node, {"spec": {"taints": None}})


def compact_etcd(etcd_url: str) -> int:
    """Compact etcd at its current revision (through its JSON gateway); returns the revision.

    Watches resuming from an older resourceVersion then get `410 Gone`, as after a real compaction.
    """
    def post(path: str, body: dict) -> dict:
        req = urllib.request.Request(f"{etcd_url}{path}", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    revision = int(post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])
    post("/v3/kv/compaction", {"revision": revision, "physical": True})
    return revision


def restart_apiserver(state: dict[str, Any]) -> None:
    """Stop the API server and start it again with the same flags (a rolling restart): clients lose
    their connections, and its new watch cache starts at etcd's current revision, so a watch resumed
    from an older resourceVersion gets 410 Gone. `state` (and its file, when it names one) is updated."""
    kube = state["kubernetes"]
    records = [processes.Started(**p) for p in state["processes"]]
    old = next(r for r in records if r.name == "kube-apiserver")
    processes.stop(old)
    _, new = processes.start("kube-apiserver", kube["apiserver_cmd"], Path(kube["logs"]))
    processes.wait_ready("kube-apiserver",
                         lambda: _https_get(f"{kube['server']}/readyz", Path(kube["ca"]), kube["token"])[0] == 200,
                         new, 120)
    state["processes"] = [new.to_json() if r.name == "kube-apiserver" else r.to_json() for r in records]
    if state.get("state_file"):
        Path(state["state_file"]).write_text(json.dumps(state, indent=2))
