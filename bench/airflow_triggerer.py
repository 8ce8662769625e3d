"""N deferred tasks in one real `airflow triggerer` process waiting on N PyTorchJobs on a real API
server: our KubeflowRunTrigger (phase `shared`) versus a trigger that GETs each job every 2 s
(bench/polling_trigger.py, phase `polling`).

What is real and what is not: the `airflow triggerer` process (Airflow's own supervisor and its
TriggerRunner child, its event loop, its watchdog), the triggers, the Kubernetes API server, the
training operator and the event path (the trigger's event is recorded by Airflow's
`Trigger.submit_event`, which moves the task instance to `scheduled`). How the tasks got deferred is
not: running N real tasks to their deferral is too expensive on this machine, so the benchmark
writes the DagRun, the N TaskInstances (DEFERRED, `next_method="execute_complete"`) and their
Trigger rows through Airflow's own ORM models, as the Execution API does when a task defers
(`TIDeferredStatePayload`). The DAG is real and serialised by `airflow dags reserialize`; its tasks
are placeholders (EmptyOperator), which the triggerer never runs.

Setup: a fresh AIRFLOW_HOME in a temporary folder, SQLite (`airflow db migrate`), the connection
`kubeflow_bench` from an environment variable, `[triggerer] capacity` above N. Each phase starts a
fresh triggerer (so CPU and RSS are the phase's own) after its N jobs exist and its N tasks are
deferred, and stops it once every task instance is resumed.

Measured per phase:
- requests/min: the API server's own `apiserver_request_total` for pytorchjobs (GET+LIST+WATCH)
  between the triggerer's start and the last resume, less the benchmark's own watch;
- CPU s and peak RSS of the triggerer's process tree (supervisor + TriggerRunner), psutil every 0.5 s;
- delays from the moment the benchmark's own watch first sees a job Succeeded to (a) the
  "Trigger fired event" record in the trigger's log (the TriggerRunner's timestamp) and (b) the
  benchmark seeing the task instance leave `deferred` in the database (polled every 0.1 s);
- the triggerer's "Triggerer's async thread was blocked" warnings (Airflow's watchdog, 0.2 s).

Run (the real stack up, see tests/realstack/README.md):
`PYTHONPATH=$PWD .venv/bin/python bench/airflow_triggerer.py --kubeconfig KUBECONFIG --namespace NS
[--jobs 1000] [--phases shared,polling]`; record the printed table in bench/RESULTS-triggerer.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cluster import ApiserverRequests, LoadSampler, SucceededClock, percentile  # noqa: E402
from bench.trigger_waits import CONN_ID, connection_env, delete_all, submit_all  # noqa: E402

DAG_ID = "bench_deferred"
CONTROL_START = 90.0  # seconds before the control phase's first moment may come (setup, start-up)
BLOCKED = "Triggerer's async thread was blocked"  # airflow/jobs/triggerer_job_runner.py, block_watchdog
FIRED = "Trigger fired event"  # airflow/jobs/triggerer_job_runner.py, run_trigger
DAG_FILE = f'''"""{DAG_ID}: one placeholder task, which the benchmark defers through the ORM in N runs."""
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG("{DAG_ID}", schedule=None, catchup=False):
    EmptyOperator(task_id="wait")
'''


def airflow_env(home: Path, jobs: int, kubeconfig: str, namespace: str) -> dict[str, str]:
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__TRIGGERER__CAPACITY": str(jobs + 100),
        "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
        "BENCH_TASKS": str(jobs),
        "PYTHONPATH": str(REPO),
        **connection_env(kubeconfig, namespace),
    }
    return env


def prepare(home: Path, env: dict[str, str]) -> None:
    """A fresh metadata database and the serialised DAG."""
    (home / "dags").mkdir(parents=True)
    (home / "dags" / f"{DAG_ID}.py").write_text(DAG_FILE)
    airflow = str(Path(sys.executable).with_name("airflow"))
    for command in (["db", "migrate"], ["dags", "reserialize"]):
        done = subprocess.run([airflow, *command], env={**os.environ, **env}, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"airflow {' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")


def defer_all(tag: str, triggers: list[Any]) -> dict[str, int]:
    """N DagRuns (`<tag>-<i>`) of the one-task DAG whose task is DEFERRED on `triggers[i]`, written as
    the Execution API writes a deferral. Returns run id -> index.

    One run per task, not one DAG of N tasks: the triggerer deserialises the task's DAG for every
    trigger it starts, and with a DAG of 1,000 tasks that took it seconds per trigger.
    """
    from airflow.models.dag_version import DagVersion
    from airflow.models.serialized_dag import SerializedDagModel
    from airflow.models.trigger import Trigger
    from airflow.sdk import timezone
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from airflow.utils.types import DagRunTriggeredByType, DagRunType

    index = {}
    with create_session() as session:
        dag = SerializedDagModel.get_dag(DAG_ID, session=session)
        version = DagVersion.get_latest_version(DAG_ID, session=session)
        for i, trigger in enumerate(triggers):
            now = timezone.utcnow()
            run = dag.create_dagrun(
                run_id=f"{tag}-{i}", run_after=now, run_type=DagRunType.MANUAL,
                triggered_by=DagRunTriggeredByType.TEST, state=DagRunState.RUNNING, session=session,
            )
            row = Trigger.from_object(trigger)
            session.add(row)
            session.flush()
            (ti,) = run.get_task_instances(session=session)
            ti.state = TaskInstanceState.DEFERRED
            ti.trigger_id = row.id
            ti.next_method = "execute_complete"
            ti.next_kwargs = {}
            ti.try_number = 1
            ti.dag_version_id = version.id
            ti.start_date = now
            index[run.run_id] = i
    return index


def retire(tag: str) -> int:
    """Fail the phase's task instances still deferred (and drop their triggers), so the next phase's
    triggerer does not pick them up. Returns how many there were."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.trigger import Trigger
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import delete, select

    with create_session() as session:
        left = session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == DAG_ID, TaskInstance.run_id.startswith(f"{tag}-"),
            TaskInstance.state == TaskInstanceState.DEFERRED,
        )).all()
        trigger_ids = [ti.trigger_id for ti in left if ti.trigger_id is not None]
        for ti in left:
            ti.state, ti.trigger_id = TaskInstanceState.FAILED, None
        session.flush()
        if trigger_ids:
            session.execute(delete(Trigger).where(Trigger.id.in_(trigger_ids)))
    return len(left)


class Triggerer:
    """A real `airflow triggerer`, its log in a file, its process tree sampled with psutil."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        import psutil

        self.log = log
        airflow = str(Path(sys.executable).with_name("airflow"))
        self._out = log.open("w")
        self.proc = subprocess.Popen([airflow, "triggerer", "--skip-serve-logs"], env={**os.environ, **env},
                                     stdout=self._out, stderr=subprocess.STDOUT)
        self.root = psutil.Process(self.proc.pid)
        self.cpu: dict[int, float] = {}  # pid -> last CPU seconds seen
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="triggerer-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        import psutil

        while not self._stop.wait(0.5):
            try:
                tree = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            rss = 0
            for proc in tree:
                try:
                    times = proc.cpu_times()
                    self.cpu[proc.pid] = times.user + times.system
                    rss += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_rss = max(self.peak_rss, rss)

    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()

    def blocked_warnings(self) -> list[str]:
        return [line.strip() for line in self.log.read_text(errors="replace").splitlines() if BLOCKED in line]


class Resumes:
    """When the task instance of each of the phase's runs was first seen out of `deferred` (the
    database polled every 0.1 s), by run id."""

    def __init__(self, db: Path, tag: str) -> None:
        self.db, self.tag = db, tag
        self.at: dict[str, float] = {}
        self.states: dict[str, str] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._poll, name="resume-poller", daemon=True).start()

    def _poll(self) -> None:
        conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=1.0)
        while not self._stop.wait(0.1):
            try:
                rows = conn.execute(
                    "SELECT run_id, state FROM task_instance WHERE dag_id = ? AND run_id LIKE ? AND state != 'deferred'",
                    (DAG_ID, f"{self.tag}-%"),
                ).fetchall()
            except sqlite3.OperationalError:  # the triggerer is writing: ask again
                continue
            now = time.time()
            for run_id, state in rows:
                if run_id not in self.at:
                    self.at[run_id] = now
                    self.states[run_id] = state
        conn.close()

    def stop(self) -> None:
        self._stop.set()


def trigger_log_times(home: Path, tag: str) -> tuple[dict[str, float], dict[str, float]]:
    """run id -> the TriggerRunner's timestamps of "trigger ... starting" and "Trigger fired event",
    from the trigger logs (JSON lines)."""
    started, fired = {}, {}
    for path in (home / "logs").glob(f"dag_id={DAG_ID}/run_id={tag}-*/task_id=wait/*.trigger.*.log"):
        run_id = path.parent.parent.name.removeprefix("run_id=")
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
            except (ValueError, KeyError, TypeError):
                continue
            event = str(record.get("event", ""))
            if event.startswith("trigger ") and event.endswith(" starting"):
                started.setdefault(run_id, stamp)
            elif event == FIRED:
                fired.setdefault(run_id, stamp)
    return started, fired


def run_phase(kind: str, home: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    from airflow_provider.triggers.kubeflow import KubeflowRunTrigger
    from bench.polling_trigger import PollingTrigger

    tag = f"{kind}-{int(time.time())}"
    clock = SucceededClock(args.kubeconfig, args.namespace).start()
    server = ApiserverRequests(args.kubeconfig)
    load = LoadSampler()
    names = [f"bench-af-{tag}-{i}" for i in range(args.jobs)]
    moments: list[float] = []
    if kind == "control":  # Airflow's own DateTimeTrigger: what the triggerer costs without us
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        handles = []
        first = time.time() + CONTROL_START
        moments = [first + random.uniform(args.min_seconds, args.max_seconds) for _ in names]
        triggers = [DateTimeTrigger(moment=datetime.fromtimestamp(m, tz=UTC)) for m in moments]
    else:
        handles = submit_all(args.kubeconfig, args.namespace, names, args.min_seconds, args.max_seconds)
    if kind == "shared":
        triggers = [KubeflowRunTrigger(handle=h.to_dict(), kubeflow_conn_id=CONN_ID) for h in handles]
    elif kind == "polling":
        triggers = [PollingTrigger(h.to_dict(), CONN_ID) for h in handles]
    index = defer_all(tag, triggers)
    resumes = Resumes(home / "airflow.db", tag)
    before, clock_before = server.counts(), clock.requests
    started = time.time()
    triggerer = Triggerer(env, home / f"triggerer-{tag}.log")
    try:
        deadline = started + args.max_seconds + args.grace
        while len(resumes.at) < args.jobs and time.time() < deadline and triggerer.proc.poll() is None:
            time.sleep(0.5)
        ended = time.time()
        verbs = ApiserverRequests.delta(before, server.counts())
        own = clock.requests - clock_before
        cpu = triggerer.cpu_seconds()
    finally:
        triggerer.stop()
    resumes.stop()
    resumed_at = dict(resumes.at)  # before `retire` fails the rest
    left = retire(tag)
    clock.stop()
    trigger_started, fired = trigger_log_times(home, tag)
    objects = [h.id.rsplit("/", 1)[-1] for h in handles]  # the backend's names (key hash, attempt)
    succeeded = {t: clock.at[objects[i]] for t, i in index.items() if handles and objects[i] in clock.at}
    if kind == "control":  # the moment each DateTimeTrigger was due is its "status change"
        succeeded = {t: moments[i] for t, i in index.items()}
    # A job that succeeded before its trigger ran is no delay of the trigger's (the triggerer was
    # still starting): only changes after the trigger started count.
    counted = [t for t in succeeded if t in trigger_started and succeeded[t] > trigger_started[t]]
    to_fired = sorted(fired[t] - succeeded[t] for t in counted if t in fired)
    to_resumed = sorted(resumed_at[t] - succeeded[t] for t in counted if t in resumed_at)
    reads = sum(n for verb, n in verbs.items() if verb in ("GET", "LIST", "WATCH")) - own
    seconds = ended - started
    (home / f"{tag}.json").write_text(json.dumps({  # every time, for a closer look afterwards
        "succeeded": succeeded, "trigger_started": trigger_started, "fired": fired, "resumed": resumed_at,
    }))
    delete_all(args.kubeconfig, [h.id for h in handles])
    blocked = triggerer.blocked_warnings()
    return {
        "phase": {"shared": "KubeflowRunTrigger (shared watch)", "polling": "polling trigger (2 s)",
                  "control": "control: Airflow's DateTimeTrigger (no cluster)"}[kind],
        "waits": args.jobs, "resumed": len(resumed_at), "fired": len(fired), "counted": len(counted), "left_deferred": left, "seconds": seconds,
        "rpm": reads / seconds * 60, "verbs": verbs, "own": own, "cpu": cpu, "rss": triggerer.peak_rss / 2**20,
        "fired_p50": statistics.median(to_fired) if to_fired else float("nan"), "fired_p95": percentile(to_fired, 0.95),
        "resumed_p50": statistics.median(to_resumed) if to_resumed else float("nan"),
        "resumed_p95": percentile(to_resumed, 0.95), "blocked": len(blocked), "blocked_lines": blocked[:5],
        "states": sorted(set(resumes.states.values())), "load": load.stop(), "log": str(triggerer.log),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kubeconfig", required=True, help="a cluster with the training operator (the real stack)")
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--min-seconds", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--grace", type=float, default=1200.0, help="seconds past --max-seconds before giving up")
    parser.add_argument("--phases", default="shared,polling")
    parser.add_argument("--home", help="AIRFLOW_HOME to create (default: a temporary folder, removed after)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-airflow-") as scratch:
        home = Path(args.home or scratch)
        env = airflow_env(home, args.jobs, args.kubeconfig, args.namespace)
        os.environ.update(env)  # before Airflow is imported here: the ORM writes go to the same database
        prepare(home, env)
        rows = []
        for kind in args.phases.split(","):
            rows.append(run_phase(kind, home, env, args))
            print(json.dumps(rows[-1]), flush=True)
    print()
    print("| phase | waits | resumed | seconds | requests/min | CPU s | peak RSS MB | fired delay p50 / p95 s "
          "| resumed delay p50 / p95 s | blocked warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['phase']} | {row['waits']} | {row['resumed']} | {row['seconds']:.0f} | {row['rpm']:.0f} | "
            f"{row['cpu']:.1f} | {row['rss']:.0f} | {row['fired_p50']:.3f} / {row['fired_p95']:.3f} | "
            f"{row['resumed_p50']:.3f} / {row['resumed_p95']:.3f} | {row['blocked']} |"
        )


if __name__ == "__main__":
    main()
