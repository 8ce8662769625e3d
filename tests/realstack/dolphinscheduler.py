"""A real DolphinScheduler standalone server built from Maven Central, for tests on the real stack.

`build` assembles the server once: the runtime classpath of `dolphinscheduler-standalone-server` (resolved by
Maven from `dolphinscheduler_assembly/pom.xml`), the jars of the modules whose parent POM was never published,
the configuration files the server jars leave out (unpacked unchanged from the modules' `-sources.jar`), and a
private virtualenv with the pydolphinscheduler release that speaks to this server's Python gateway.

`start` runs `org.apache.dolphinscheduler.StandaloneServer` (in-memory H2, embedded ZooKeeper, master, worker,
alert server, REST API and Python gateway in one JVM) on free ports. Every setting we change is passed as a
`-D` system property: Spring reads them over `application.yaml`, and DolphinScheduler's `PropertyUtils` lets them
override `common.properties`, so the upstream files stay as published.

Why 3.1.1: it is the newest release whose whole standalone-server tree is on Maven Central (no 3.2.x server module
was published there; 3.4.x publishes no standalone-server). Its gateway has no auth token and predates the
"workflow" renames of pydolphinscheduler 4.x, so the client is apache-dolphinscheduler 3.1.1 (CLIENTS below).
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.realstack.dolphinscheduler_api import RestApi

ASSEMBLY_POM = Path(__file__).with_name("dolphinscheduler_assembly") / "pom.xml"
# One Maven run (executions defined in ASSEMBLY_POM, which says why each is needed): the runtime classpath, the
# jars of the modules whose parent POM is missing on Central, and the config files from the -sources.jar files.
MAVEN_GOALS = ("dependency:copy-dependencies@libs", "dependency:copy@orphans", "dependency:unpack@configs")
DEFAULT_VERSION = "3.1.1"
# The pydolphinscheduler release whose gateway calls match each server version.
CLIENTS = {"3.1.1": "apache-dolphinscheduler==3.1.1"}
ADMIN_USER = "admin"
ADMIN_PASSWORD = "dolphinscheduler123"  # the standalone server's seeded admin (dolphinscheduler_h2.sql)
PROJECT = "kubeflow-tasks"
STAMP = "BUILT.json"
# Set in the server's environment; every task process inherits it, which lets stop() find the task processes a STOP
# orphans (they are reparented to init, so no parent link leads to them any more).
MARKER = "KUBEFLOW_TASKS_DOLPHINSCHEDULER_RUN"
START_DEADLINE = 600.0  # ~75 s on an idle 2-core machine, over 3 min while other suites compile
JAVA_OPTIONS = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseSerialGC",  # two cores: no parallel GC threads fighting the other suites
    "-XX:TieredStopAtLevel=1",  # C1 only: start-up dominates a test run
    # AbstractCommandExecutor.getProcessId reads java.lang.ProcessImpl.pid by reflection; without this every task
    # gets pid 0 and a stop or timeout cannot kill it ("processId is not exist").
    "--add-opens",
    "java.base/java.lang=ALL-UNNAMED",
    "-Duser.timezone=UTC",
    "-Dfile.encoding=UTF-8",
)


def server_dir(root: Path, version: str) -> Path:
    return root / f"dolphinscheduler-{version}"


def client_python(root: Path, version: str) -> Path:
    """The interpreter of the private venv that holds the matching pydolphinscheduler."""
    return server_dir(root, version) / "client" / "bin" / "python"


def build(root: Path, version: str, progress: Callable[[str], None]) -> None:
    """Assemble the server into root/dolphinscheduler-<version>/ unless its stamp file exists.

    Work happens in a sibling `.partial` directory renamed at the end (and removed on failure), so an interrupted
    build leaves nothing that looks finished. Downloads are cached in ~/.m2 (and pip's cache), so a rebuild after `rm -r` is quick.
    """
    target = server_dir(root, version)
    if (target / STAMP).exists():
        progress(f"dolphinscheduler {version}: already built in {target}")
        return
    for tool in ("mvn", "java"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"dolphinscheduler {version}: `{tool}` is not on PATH")
    partial = root / f".dolphinscheduler-{version}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        _assemble(partial, version, progress)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    jars = len(list((partial / "libs").glob("*.jar")))
    (partial / STAMP).write_text(json.dumps({"version": version, "client": CLIENTS[version], "jars": jars}))
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    progress(f"dolphinscheduler {version}: built {jars} jars into {target}")


def _assemble(partial: Path, version: str, progress: Callable[[str], None]) -> None:
    libs, conf = partial / "libs", partial / "conf"
    libs.mkdir(parents=True)
    conf.mkdir()

    progress(f"dolphinscheduler {version}: resolving standalone-server, its jars and config files from Maven Central")
    _mvn(version, f"-Dwork.dir={partial}", f"-Dlibs.dir={libs}", f"-Dconf.dir={conf}", *MAVEN_GOALS)
    if version not in CLIENTS:
        raise RuntimeError(f"dolphinscheduler {version}: no pydolphinscheduler release known to match (CLIENTS)")
    progress(f"dolphinscheduler {version}: installing {CLIENTS[version]} into a private venv")
    _client_venv(partial / "client", CLIENTS[version])

    shutil.rmtree(partial / "maven", ignore_errors=True)  # Maven's unpack markers


def _mvn(version: str, *args: str) -> None:
    command = ["mvn", "-B", "-ntp", "-f", str(ASSEMBLY_POM), f"-Dds.version={version}", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"dolphinscheduler {version}: {_maven_failure(result.stdout + result.stderr)}")


def _maven_failure(output: str) -> str:
    """One line naming what Maven could not fetch, read from its error output."""
    for pattern in (
        r"([\w.-]+:[\w.-]+:\w+:[\w.-]+) was not found in",
        r"Failed to read artifact descriptor for (\S+)",
        r"Could not find artifact (\S+)",
        r"Could not transfer artifact (\S+)",
        r"Could not resolve dependencies for project \S+: (.+?)(?: ->|$)",
    ):
        match = re.search(pattern, output, re.MULTILINE)
        if match:
            return f"could not fetch {match.group(1).rstrip(':')} from Maven Central"
    errors = [line for line in output.splitlines() if line.startswith("[ERROR]") and line.strip() != "[ERROR]"]
    return errors[0].removeprefix("[ERROR] ") if errors else "mvn failed without an [ERROR] line"


def _client_venv(venv: Path, requirement: str) -> None:
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", requirement],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"could not fetch {requirement} from PyPI: {result.stderr.strip().splitlines()[-1:]}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def start(root: Path, version: str, workdir: Path) -> tuple[subprocess.Popen[bytes], dict]:
    """Start the built server on free loopback ports; return it once the gateway, REST API and a worker answer.

    The state dict is the harness's contract. `token` is "" because the 3.1 gateway has no auth token (pass it as
    PYDS_JAVA_GATEWAY_AUTH_TOKEN: an empty token makes py4j skip authentication). `tenant` is the OS user the
    worker runs tasks as (sudo.enable=false, so the tenant must be an existing OS user: the current one).
    """
    home = server_dir(root, version)
    if not (home / STAMP).exists():
        raise RuntimeError(f"dolphinscheduler {version} is not built in {home}: run build() first")
    # The 3.1 worker kills a task with `sudo -u <tenant> kill ...` even with sudo.enable=false (task-api's
    # OSUtils.getSudoCmd ignores it) and lists the task's tree with pstree: without both, a timeout kills nothing.
    for tool, package in (("sudo", "sudo"), ("pstree", "psmisc")):
        if shutil.which(tool) is None:
            raise RuntimeError(f"dolphinscheduler {version}: the worker needs `{tool}` (apt-get install -y {package})")
    workdir.mkdir(parents=True, exist_ok=True)
    ports = {name: _free_port() for name in ("rest", "gateway", "callback", "master", "worker", "alert")}
    properties = {
        "server.address": "127.0.0.1",
        "server.port": ports["rest"],
        "python-gateway.gateway-server-address": "127.0.0.1",
        "python-gateway.gateway-server-port": ports["gateway"],
        "python-gateway.python-address": "127.0.0.1",
        "python-gateway.python-port": ports["callback"],
        "master.listen-port": ports["master"],
        "worker.listen-port": ports["worker"],
        "alert.port": ports["alert"],
        "alert.rpc.port": ports["alert"],
        "worker.alert-listen-port": ports["alert"],
        # A shared 2-core machine runs at load 5-15: the default limit (2 x cores) would refuse every command.
        "master.max-cpu-load-avg": 10000,
        "worker.max-cpu-load-avg": 10000,
        "master.reserved-memory": 0.01,
        "worker.reserved-memory": 0.01,
        "sudo.enable": "false",
        "data.basedir.path": workdir / "data",
        "spring.cloud.kubernetes.enabled": "false",
    }
    command = [
        shutil.which("java") or "java",
        *JAVA_OPTIONS,
        *(f"-D{key}={value}" for key, value in properties.items()),
        "-cp",
        f"{home / 'conf'}:{home / 'libs'}/*",
        "org.apache.dolphinscheduler.StandaloneServer",
    ]
    out = (workdir / "server.out").open("wb")
    # Own session: stop() signals the whole group, which includes the shells the worker spawns for tasks.
    env = {**os.environ, MARKER: str(workdir)}
    proc = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    out.close()
    api = RestApi(f"http://127.0.0.1:{ports['rest']}/dolphinscheduler", ADMIN_USER, ADMIN_PASSWORD)
    try:
        _wait_ready(proc, api, ports["gateway"], workdir)
        api.create_project(PROJECT)
    except BaseException:
        stop(proc)
        raise
    state = {
        "gateway": f"127.0.0.1:{ports['gateway']}",
        "token": "",
        "api": api.base,
        "user": ADMIN_USER,
        "password": ADMIN_PASSWORD,
        "project": PROJECT,
        "tenant": getpass.getuser(),
        "version": version,
        "client_python": str(client_python(root, version)),
        "logs": str(workdir / "logs"),
    }
    return proc, state


def _wait_ready(proc: subprocess.Popen[bytes], api: RestApi, gateway_port: int, workdir: Path) -> None:
    """Poll until the gateway accepts, the admin can log in and a master and a worker are registered."""
    deadline = time.monotonic() + START_DEADLINE
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("the Python gateway", lambda: _accepts(gateway_port)),
        ("the REST login", api.try_login),
        ("a registered master", lambda: bool(api.get("/monitor/masters"))),
        ("a registered worker", lambda: bool(api.get("/monitor/workers"))),
    ]
    for what, check in checks:
        while not check():
            if proc.poll() is not None:
                raise RuntimeError(f"dolphinscheduler exited ({proc.returncode}) before {what}: {_tail(workdir)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"dolphinscheduler: no {what} after {START_DEADLINE:.0f}s: {_tail(workdir)}")
            time.sleep(0.5)


def _tail(workdir: Path) -> str:
    log = workdir / "logs" / "dolphinscheduler-standalone.log"
    source = log if log.exists() else workdir / "server.out"
    lines = source.read_text(errors="replace").splitlines() if source.exists() else []
    errors = [line for line in lines if line.startswith("[ERROR]")]
    return (errors or lines or ["(no output)"])[-1][:300]


def descendants(pid: int) -> list[tuple[int, str]]:
    """Every live process below `pid` as (pid, start time), read from /proc before children are reparented.

    The start time lets stop() skip a pid that was reused by an unrelated process in the meantime.
    """
    children: dict[int, list[tuple[int, str]]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append((int(stat.parent.name), fields[19]))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child[0])
    return found


def _marker_of(pid: int) -> str | None:
    try:
        for entry in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0"):
            if entry.startswith(f"{MARKER}=".encode()):
                return entry.split(b"=", 1)[1].decode()
    except OSError:
        pass
    return None


def _start_time(pid: int) -> str | None:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _marked(marker: str) -> list[tuple[int, str]]:
    """Live processes whose environment carries MARKER=marker: the server's task processes, orphaned or not."""
    needle = f"{MARKER}={marker}".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if needle in environ.read_bytes().split(b"\0"):
                started = _start_time(int(environ.parent.name))
                if started is not None:
                    found.append((int(environ.parent.name), started))
        except OSError:
            continue
    return found


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server and every process it started, including task processes that left its process group.

    SIGTERM first (Spring closes the embedded ZooKeeper), then SIGKILL for the group, for every descendant seen
    before the signal (a task that called setsid is outside the group but still below the JVM until it dies) and
    for every process carrying our MARKER (what a STOP orphaned: the 3.1 worker SIGTERMs only the task's wrapper
    shell, so the task's own script and children are reparented to init and keep running).
    """
    marker = _marker_of(proc.pid)
    tree = descendants(proc.pid) + (_marked(marker) if marker else [])
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    doomed = [(pid, started) for pid, started in tree + (_marked(marker) if marker else [])]
    for pid, started in doomed:
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    proc.wait(timeout=30)
    # kill() only queues the signal: return once every one of them is really gone (or a zombie awaiting init).
    deadline = time.monotonic() + 30
    while any(_running(pid, started) for pid, started in doomed) and time.monotonic() < deadline:
        time.sleep(0.05)


def _running(pid: int, started: str) -> bool:
    try:
        fields = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


# ---------------------------------------------------------------- the harness's entry points


def version() -> str:
    """The pinned version (tests/realstack/versions.toml)."""
    import tomllib

    pins = tomllib.loads((Path(__file__).with_name("versions.toml")).read_text())
    return pins.get("dolphinscheduler", {}).get("version", DEFAULT_VERSION)


def build_step(root: Path, progress: Callable[[str], None]) -> None:
    """`make testenv`'s DolphinScheduler step; a failure is one line (BuildError)."""
    from tests.realstack.build import BuildError, ensure_system_tools

    ensure_system_tools(progress)
    try:
        build(root, version(), progress)
    except RuntimeError as exc:
        raise BuildError(f"testenv: {exc}") from None


def start_step(workdir: Path):
    """`python -m tests.realstack up`'s DolphinScheduler step: the state entries and the started server."""
    from tests.realstack import processes
    from tests.realstack.build import testenv_dir

    proc, state = start(testenv_dir(), version(), workdir)
    started = processes.Started("dolphinscheduler", proc.pid, processes.psutil.Process(proc.pid).create_time(),
                                str(workdir / "server.out"))
    state["marker"] = str(workdir)
    return state, [started]


def kill_marked(marker: str) -> None:
    """After the server is stopped: kill the task processes a STOP orphaned (they carry our marker)."""
    doomed = _marked(marker)
    for pid, started in doomed:
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 30
    while any(_running(pid, started) for pid, started in doomed) and time.monotonic() < deadline:
        time.sleep(0.05)
