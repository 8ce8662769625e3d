"""N deferred waits in one triggerer-like process: our KubeflowRunTrigger versus a trigger that polls
each job every 2 s, as the cncf-kubernetes pod trigger does.

Each phase runs in a fresh child process (so peak RSS and CPU are the phase's own) that submits N
PyTorchJobs, then runs N triggers on one asyncio event loop the way Airflow's triggerer does
(`async for event in trigger.run()`), with a heartbeat that counts "blocked main thread" stalls
(the triggerer warns when its loop is blocked for more than 0.2 s). Measured per phase, while
waiting only (submissions excluded): API requests per minute (counted on the client's urllib3
pools, so it works against any server), CPU seconds and peak RSS of the process, the delay from a
job's state change to its trigger's event (p50/p95), and the stalls.

Target: `--kubeconfig` points at any cluster with the training operator (the real stack: kwok runs
the pods, `--run-seconds` is then ignored); without it, the wire-level double (tests/k8s_double)
runs in another child process. With the double, the delay is measured from its own change times;
on a real cluster from the job's `Succeeded` condition (lastTransitionTime, 1 s resolution).

Run: `.venv/bin/python bench/trigger_waits.py [--jobs 1000] [--kubeconfig PATH --namespace NS]`;
record the printed table in bench/RESULTS-triggerer.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

POLL_SECONDS = 2.0
STALL_SECONDS = 0.2  # Airflow's triggerer logs "Triggerer's async thread was blocked" past this


def job(name: str, run_seconds: float) -> dict[str, Any]:
    container = {"name": "pytorch", "image": "python:3.11-slim", "command": ["python", "train.py"]}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "annotations": {"double.kubeflow-tasks.dev/run-seconds": f"{run_seconds:.2f}"}},
        "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [container]}}}}},
    }


def requests_made(backend: Any) -> int:
    """Requests sent so far through the backend's Kubernetes client (urllib3 counts them per pool)."""
    manager = backend.cluster.api_client().rest_client.pool_manager
    return sum(manager.pools[key].num_requests for key in manager.pools.keys())


def polling_trigger_class() -> type:
    from airflow.triggers.base import BaseTrigger, TriggerEvent

    class PollingTrigger(BaseTrigger):
        """The baseline: one GET per job every 2 s (the cncf-kubernetes pod trigger's way)."""

        def __init__(self, handle: dict[str, Any], backend: Any, pool: ThreadPoolExecutor) -> None:
            super().__init__()
            self.handle, self.backend, self.pool = handle, backend, pool

        def serialize(self) -> tuple[str, dict[str, Any]]:
            return ("bench.PollingTrigger", {"handle": self.handle})

        async def run(self):  # noqa: ANN201 - Airflow's signature
            from shared.status import Handle

            handle = Handle.from_dict(self.handle)
            loop = asyncio.get_running_loop()
            await asyncio.sleep(random.uniform(0, POLL_SECONDS))
            while True:
                status = await loop.run_in_executor(self.pool, self.backend.status, handle)
                if status.terminal:
                    yield TriggerEvent({"event": "success", "status": status.to_dict(), "handle": self.handle})
                    return
                await asyncio.sleep(POLL_SECONDS)

    return PollingTrigger


def run_phase(kind: str, kubeconfig: str, namespace: str, jobs: int, min_s: float, max_s: float, out: Any) -> None:
    """One phase in this (child) process; sends its measurements through `out`."""
    os.environ["AIRFLOW_CONN_KUBEFLOW_BENCH"] = json.dumps(
        {"conn_type": "kubeflow", "extra": {"backend": "kubernetes", "kubeconfig_path": kubeconfig, "namespace": namespace}}
    )
    from airflow_provider.triggers.kubeflow import KubeflowRunTrigger, shared_backend
    from shared.backends.base import SubmitContext
    from shared.backends.kubernetes import KubernetesBackend
    from shared.specs import load_spec

    submitter = KubernetesBackend(kubeconfig=kubeconfig, namespace=namespace)
    tag = f"{kind}-{int(time.time())}"
    specs = [load_spec(job(f"bench-{tag}-{i}", random.uniform(min_s, max_s))) for i in range(jobs)]
    with ThreadPoolExecutor(16) as pool:
        handles = list(pool.map(lambda i: submitter.submit(specs[i], f"bench/{tag}/{i}", 1, SubmitContext()), range(jobs)))

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(64)
        if kind == "shared":
            backend = await shared_backend("kubeflow_bench")
            triggers = [KubeflowRunTrigger(handle=h.to_dict(), kubeflow_conn_id="kubeflow_bench") for h in handles]
        else:
            backend = KubernetesBackend(kubeconfig=kubeconfig, namespace=namespace)
            await loop.run_in_executor(pool, backend.connect)
            triggers = [polling_trigger_class()(h.to_dict(), backend, pool) for h in handles]
        stalls: list[float] = []
        stop = asyncio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if now - last - 0.05 > STALL_SECONDS:
                    stalls.append(now - last - 0.05)
                last = now

        fired: dict[str, tuple[float, float]] = {}  # handle id -> (monotonic, wall clock) of the event

        async def one(trigger: Any) -> None:
            async for event in trigger.run():
                fired[event.payload["handle"]["id"]] = (time.monotonic(), time.time())
                return

        beat = asyncio.ensure_future(heartbeat())
        before, cpu_before, started = requests_made(backend), _cpu(), time.monotonic()
        await asyncio.gather(*(one(t) for t in triggers))
        elapsed = time.monotonic() - started
        stop.set()
        await beat
        return {
            "requests": requests_made(backend) - before,
            "seconds": elapsed,
            "cpu": _cpu() - cpu_before,
            "stalls": stalls,
            "fired": fired,
            "succeeded_at": {h.id: _succeeded_at(submitter, h) for h in handles},
        }

    result = asyncio.run(main())
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["handles"] = [h.id for h in handles]
    out.send(result)


def _succeeded_at(backend: Any, handle: Any) -> float | None:
    """Wall-clock time of the job's Succeeded condition (1 s resolution), while the object exists."""
    try:
        obj = backend.get_object(*handle.id.split("/"))
    except Exception:
        return None
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Succeeded" and cond.get("status") == "True":
            return datetime.fromisoformat(cond["lastTransitionTime"].replace("Z", "+00:00")).timestamp()
    return None


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def serve_double(conn: Any, specs_dir: str) -> None:
    from tests.k8s_double import KubeDouble

    double = KubeDouble(Path(specs_dir)).start()
    double.set_behaviour(tick=0.05, bookmark_interval=30.0)
    conn.send(double.url)
    while True:
        command = conn.recv()
        if command == "events":
            conn.send({k: list(v) for k, v in double.events_at.items()})
        else:
            double.stop()
            conn.send("stopped")
            return


def delays(result: dict[str, Any], events: dict[str, Any] | None) -> list[float]:
    out = []
    for handle_id in result["handles"]:
        fired = result["fired"].get(handle_id)
        if fired is None:
            continue
        if events is not None:  # the double's own change times (system-wide monotonic clock)
            namespace, plural, name = handle_id.split("/")
            done = [at for at, what in events.get(f"{plural}/{namespace}/{name}", []) if what == "Succeeded"]
            if done:
                out.append(fired[0] - done[0])
        elif result["succeeded_at"].get(handle_id) is not None:
            out.append(fired[1] - result["succeeded_at"][handle_id])
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kubeconfig", help="a real cluster (default: the double)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--min-seconds", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--phases", default="shared,polling")
    parser.add_argument("--specs", default=str(REPO.parent / "shared" / "specs"))
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    double_conn = None
    with tempfile.TemporaryDirectory() as scratch:
        kubeconfig = args.kubeconfig
        if kubeconfig is None:
            double_conn, child_conn = ctx.Pipe()
            ctx.Process(target=serve_double, args=(child_conn, args.specs), daemon=True).start()
            url = double_conn.recv()
            kubeconfig = str(Path(scratch, "kubeconfig"))
            Path(kubeconfig).write_text(
                f"apiVersion: v1\nkind: Config\ncurrent-context: d\nclusters: [{{name: d, cluster: {{server: '{url}'}}}}]\n"
                "users: [{name: d, user: {token: s3cr3t-token}}]\n"
                f"contexts: [{{name: d, context: {{cluster: d, user: d, namespace: {args.namespace}}}}}]\n"
            )
        rows = []
        for kind in args.phases.split(","):
            out, child_out = ctx.Pipe()
            proc = ctx.Process(
                target=run_phase,
                args=(kind, kubeconfig, args.namespace, args.jobs, args.min_seconds, args.max_seconds, child_out),
            )
            proc.start()
            result = out.recv()
            proc.join(60)
            events = None
            if double_conn is not None:
                double_conn.send("events")
                events = double_conn.recv()
            lags = delays(result, events)
            rows.append({
                "phase": {"shared": "KubeflowRunTrigger (shared watch)", "polling": f"polling trigger ({POLL_SECONDS:g} s)"}[kind],
                "waits": args.jobs, "seconds": result["seconds"],
                "rpm": result["requests"] / result["seconds"] * 60, "cpu": result["cpu"], "rss": result["rss_mb"],
                "p50": statistics.median(lags) if lags else float("nan"),
                "p95": lags[int(0.95 * (len(lags) - 1))] if lags else float("nan"),
                "stalls": len(result["stalls"]), "worst": max(result["stalls"], default=0.0),
            })
            print(_row(rows[-1]), flush=True)
        if double_conn is not None:
            double_conn.send("stop")
            double_conn.recv()
    print()
    print("| phase | waits | seconds | requests/min | CPU s | peak RSS MB | delay p50 s | delay p95 s | stalls > 0.2 s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))


def _row(row: dict[str, Any]) -> str:
    return (
        f"| {row['phase']} | {row['waits']} | {row['seconds']:.0f} | {row['rpm']:.0f} | {row['cpu']:.1f} | "
        f"{row['rss']:.0f} | {row['p50']:.3f} | {row['p95']:.3f} | {row['stalls']} (worst {row['worst']:.2f} s) |"
    )


if __name__ == "__main__":
    main()
