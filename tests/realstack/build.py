"""Build the real test stack once, from the package registries only (`make testenv`).

Why a build and not a download: the machines reach the Go module proxy and Maven Central but no
release downloads, so etcd, the Kubernetes control plane, kwok and the Kubeflow training operator are
compiled from their Go modules. The result is cached outside the checkout, keyed by every pinned
version, so a second build (and every `up`) reuses it; Go's own module and build caches make a rebuild
after a version bump incremental.

Each step prints one progress line; a step that cannot fetch what it needs fails with one line naming
it (exit 2 from the command line).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
VERSIONS_FILE = HERE / "versions.toml"


class BuildError(RuntimeError):
    """One line saying what could not be built or fetched."""


@dataclass(frozen=True)
class Versions:
    kubernetes: str
    staging: str
    etcd: str
    kwok: str
    training_operator: str

    @classmethod
    def load(cls, path: Path = VERSIONS_FILE) -> Versions:
        data = tomllib.loads(path.read_text())
        return cls(
            kubernetes=data["kubernetes"]["version"],
            staging=data["kubernetes"]["staging"],
            etcd=data["etcd"]["version"],
            kwok=data["kwok"]["version"],
            training_operator=data["training_operator"]["version"],
        )

    @property
    def key(self) -> str:
        """The cache folder's name: every version, so a bump never reuses a stale binary."""
        return (
            f"k8s-{self.kubernetes}_etcd-{self.etcd}_kwok-{self.kwok}"
            f"_training-operator-{self.training_operator}"
        )


def cache_root() -> Path:
    base = os.environ.get("KUBEFLOW_TASKS_TESTENV") or str(Path.home() / ".cache/kubeflow-tasks/testenv")
    return Path(base).expanduser()


def testenv_dir(versions: Versions | None = None) -> Path:
    return cache_root() / (versions or Versions.load()).key


def go_env(gocache_writable: bool = True) -> dict[str, str]:
    env = dict(os.environ)
    # Static binaries, the machine's own Go (no toolchain download), modules as the go.mod says.
    env.update(CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-mod=mod")
    go_bin = "/usr/local/go/bin"
    if Path(go_bin).is_dir() and go_bin not in env.get("PATH", ""):
        env["PATH"] = f"{go_bin}:{env.get('PATH', '')}"
    return env


def run(cmd: list[str], cwd: Path, what: str, env: dict[str, str] | None = None) -> str:
    """Run a build command; on failure raise one line naming `what` and the tool's last error line."""
    if shutil.which(cmd[0], path=(env or os.environ).get("PATH")) is None:
        raise BuildError(f"testenv: {cmd[0]} is not installed (needed to build {what})")
    proc = subprocess.run(cmd, cwd=cwd, env=env or go_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line.strip() for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        fetch = [line for line in lines if any(w in line for w in ("404", "not found", "unknown revision",
                                                                    "dial tcp", "no matching versions",
                                                                    "Could not find artifact"))]
        detail = (fetch or lines or ["no output"])[-1]
        raise BuildError(f"testenv: could not build {what}: {detail}")
    return proc.stdout


def module_dir(module: str, version: str, cwd: Path) -> Path:
    """Where the Go module cache holds a module's files (downloading it if needed)."""
    out = run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd, f"{module}@{version}")
    return Path(json.loads(out)["Dir"])


def version_ldflags(kubernetes: str) -> str:
    """Version information the binaries report (`--version`, /version) as a release build would."""
    major, minor = kubernetes.lstrip("v").split(".")[:2]
    flags = []
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={kubernetes}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean"]
    return " ".join(["-s", "-w", *flags])


def _wrapper(src: Path, name: str) -> None:
    src.mkdir(parents=True, exist_ok=True)
    if not (src / "go.mod").exists():
        run(["go", "mod", "init", name], src, f"the {name} wrapper module")


def build_etcd(root: Path, v: Versions) -> None:
    src = root / "src" / "etcd"
    _wrapper(src, "local/etcdbuild")
    run(["go", "get", f"go.etcd.io/etcd/server/v3@{v.etcd}"], src, f"go.etcd.io/etcd/server/v3@{v.etcd}")
    run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(root / "bin" / "etcd"),
         "go.etcd.io/etcd/server/v3"], src, f"etcd {v.etcd}")


KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")


def build_kubernetes(root: Path, v: Versions) -> None:
    """kube-apiserver, -controller-manager and -scheduler from k8s.io/kubernetes.

    k8s.io/kubernetes requires every staging module at v0.0.0 and replaces it with a local folder
    that its module zip leaves out, so a wrapper module replaces each with the published version.
    The staging list changes between releases: it is read from the downloaded go.mod.
    """
    src = root / "src" / "kubernetes"
    _wrapper(src, "local/k8sbuild")
    gomod = run(["go", "mod", "download", "-json", f"k8s.io/kubernetes@{v.kubernetes}"], src,
                f"k8s.io/kubernetes@{v.kubernetes}")
    upstream = Path(json.loads(gomod)["GoMod"]).read_text()
    staging = sorted({line.split()[0] for line in upstream.splitlines()
                      if line.strip().startswith("k8s.io/") and line.split()[1:2] == ["v0.0.0"]})
    if not staging:
        raise BuildError(f"testenv: k8s.io/kubernetes@{v.kubernetes} lists no staging modules to replace")
    edits = [f"-replace={m}={m}@{v.staging}" for m in staging]
    godebug = [line.split(None, 1)[1] for line in upstream.splitlines() if line.startswith("godebug ")]
    edits += [f"-godebug={g}" for g in godebug]
    run(["go", "mod", "edit", *edits], src, "the Kubernetes wrapper module")
    (src / "tools.go").write_text(
        "//go:build tools\n\n// Package tools pins the Kubernetes commands this module builds.\npackage tools\n\n"
        "import (\n" + "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in KUBE_COMMANDS) + ")\n"
    )
    run(["go", "get", f"k8s.io/kubernetes@{v.kubernetes}"], src, f"k8s.io/kubernetes@{v.kubernetes}")
    run(["go", "mod", "tidy", "-e"], src, f"the dependencies of k8s.io/kubernetes@{v.kubernetes}")
    run(["go", "build", "-trimpath", "-pgo=off", "-ldflags", version_ldflags(v.kubernetes),
         "-o", str(root / "bin") + "/", *(f"k8s.io/kubernetes/cmd/{c}" for c in KUBE_COMMANDS)],
        src, f"kube-apiserver, kube-controller-manager and kube-scheduler {v.kubernetes}")


def build_kwok(root: Path, v: Versions) -> None:
    env = go_env() | {"GOBIN": str(root / "bin")}
    run(["go", "install", "-trimpath", f"sigs.k8s.io/kwok/cmd/kwok@{v.kwok}"], root, f"kwok {v.kwok}", env)


def build_training_operator(root: Path, v: Versions) -> None:
    """The operator's own go.mod has no replaces, so `go install` builds it as released; its CRDs
    come from the same module version."""
    module = "github.com/kubeflow/training-operator"
    env = go_env() | {"GOBIN": str(root / "bin")}
    run(["go", "install", "-trimpath", f"{module}/cmd/training-operator.v1@{v.training_operator}"], root,
        f"the training operator {v.training_operator}", env)
    crds = module_dir(module, v.training_operator, root) / "manifests" / "base" / "crds"
    target = root / "crds"
    target.mkdir(exist_ok=True)
    for kind in ("pytorchjobs", "tfjobs"):
        shutil.copyfile(crds / f"kubeflow.org_{kind}.yaml", target / f"kubeflow.org_{kind}.yaml")


@dataclass(frozen=True)
class Step:
    name: str
    build: Callable[[Path, Versions], None]
    outputs: tuple[str, ...]


STEPS = (
    Step("etcd", build_etcd, ("bin/etcd",)),
    Step("kubernetes", build_kubernetes, tuple(f"bin/{c}" for c in KUBE_COMMANDS)),
    Step("kwok", build_kwok, ("bin/kwok",)),
    Step("training-operator", build_training_operator,
         ("bin/training-operator.v1", "crds/kubeflow.org_pytorchjobs.yaml", "crds/kubeflow.org_tfjobs.yaml")),
)


def build(progress: Callable[[str], None] = print, only: str | None = None) -> Path:
    """Build what is missing and return the stack's folder; one progress line per step."""
    versions = Versions.load()
    root = testenv_dir(versions)
    (root / "bin").mkdir(parents=True, exist_ok=True)
    steps = [s for s in STEPS if only in (None, "kubernetes")]
    extra = _extra_steps(only)
    total = len(steps) + len(extra)
    for i, step in enumerate(steps, 1):
        stamp = root / f".{step.name}.done"
        if stamp.exists() and all((root / out).exists() for out in step.outputs):
            progress(f"testenv: [{i}/{total}] {step.name}: cached in {root}")
            continue
        progress(f"testenv: [{i}/{total}] {step.name}: building ...")
        started = time.monotonic()
        step.build(root, versions)
        stamp.write_text(f"{time.monotonic() - started:.0f}s\n")
        progress(f"testenv: [{i}/{total}] {step.name}: built in {time.monotonic() - started:.0f} s")
    for j, (name, fn) in enumerate(extra, len(steps) + 1):
        progress(f"testenv: [{j}/{total}] {name}: ...")
        fn(root, lambda line, j=j, name=name: progress(f"testenv: [{j}/{total}] {name}: {line}"))
    return root


def ensure_system_tools(progress: Callable[[str], None]) -> None:
    """DolphinScheduler's worker kills a task's tree with `sudo ... kill` and finds it with `pstree`
    (psmisc): install them from Debian when we may (root), else say what is missing in one line."""
    missing = [pkg for tool, pkg in (("sudo", "sudo"), ("pstree", "psmisc")) if shutil.which(tool) is None]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BuildError(f"testenv: the DolphinScheduler worker needs {' and '.join(missing)}: "
                         f"apt-get install -y {' '.join(missing)}")
    progress(f"installing {' '.join(missing)} from Debian")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise BuildError(f"testenv: could not install {' '.join(missing)}: {last}")


def _extra_steps(only: str | None) -> list[tuple[str, Callable[[Path, Callable[[str], None]], None]]]:
    """Builds that live in their own modules (DolphinScheduler), when present."""
    if only not in (None, "dolphinscheduler"):
        return []
    try:
        from . import dolphinscheduler
    except ImportError:
        return []
    return [("dolphinscheduler", dolphinscheduler.build_step)]


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.realstack build", description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["kubernetes", "dolphinscheduler"])
    args = parser.parse_args(argv)
    try:
        root = build(only=args.only)
    except BuildError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print(f"testenv: ready in {root}")
    return 0
