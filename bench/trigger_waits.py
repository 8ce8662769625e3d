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
the pods for their annotated 30-120 s); without it, the wire-level double (tests/k8s_double) runs in
another child process. With the double, the delay is measured from its own change times; on a real
cluster from the moment a watch of the benchmark's own (in the parent process) first sees the job
`Succeeded`, and also from the condition's lastTransitionTime (whole seconds, so up to 1 s more).
On a real cluster the API server's own counters (`apiserver_request_total` for pytorchjobs) are
reported next to the client's count, and each phase's jobs are deleted after it.

The baseline trigger is bench/polling_trigger.py; bench/airflow_triggerer.py runs the same two
triggers inside a real `airflow triggerer` process.

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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cluster import (  # noqa: E402 - after the path
    ApiserverRequests,
    LoadSampler,
    SucceededClock,
    api_client,
    condition_time,
    cpu_seconds,
    default_specs,
    percentile,
    pytorch_job,
    serve_double,
)

STALL_SECONDS = 0.2  # Airflow's triggerer logs "Triggerer's async thread was blocked" past this
CONN_ID = "kubeflow_bench"


def requests_made(backend: Any) -> int:
    """Requests sent so far through the backend's Kubernetes client (urllib3 counts them per pool)."""
    manager = backend.cluster.api_client().rest_client.pool_manager
    return sum(manager.pools[key].num_requests for key in manager.pools.keys())


def submit_all(kubeconfig: str, namespace: str, names: list[str], min_s: float, max_s: float) -> list[Any]:
    """Submit one PyTorchJob per name (16 at a time); returns their handles."""
    from shared.backends.base import SubmitContext
    from shared.backends.kubernetes import KubernetesBackend
    from shared.specs import load_spec

    submitter = KubernetesBackend(kubeconfig=kubeconfig, namespace=namespace)
    specs = [load_spec(pytorch_job(name, random.uniform(min_s, max_s))) for name in names]
    with ThreadPoolExecutor(16) as pool:
        return list(pool.map(lambda i: submitter.submit(specs[i], f"bench/{names[i]}", 1, SubmitContext()),
                             range(len(names))))


def delete_all(kubeconfig: str, handle_ids: list[str]) -> None:
    """Delete the phase's jobs (their pods go with them), so the next phase meets an idle operator."""
    from kubernetes import client

    api = client.CustomObjectsApi(api_client(kubeconfig))

    def delete(handle_id: str) -> None:
        namespace, plural, name = handle_id.split("/")
        try:
            api.delete_namespaced_custom_object("kubeflow.org", "v1", namespace, plural, name,
                                                propagation_policy="Background")
        except Exception:
            pass

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(delete, handle_ids))


def connection_env(kubeconfig: str, namespace: str) -> dict[str, str]:
    return {f"AIRFLOW_CONN_{CONN_ID.upper()}": json.dumps(
        {"conn_type": "kubeflow", "extra": {"backend": "kubernetes", "kubeconfig_path": kubeconfig, "namespace": namespace}}
    )}


def run_phase(kind: str, kubeconfig: str, namespace: str, jobs: int, min_s: float, max_s: float, out: Any) -> None:
    """One phase in this (child) process; sends its measurements through `out`."""
    os.environ.update(connection_env(kubeconfig, namespace))
    from airflow_provider.triggers.kubeflow import KubeflowRunTrigger, shared_backend
    from bench.polling_trigger import PollingTrigger

    tag = f"{kind}-{int(time.time())}"
    handles = submit_all(kubeconfig, namespace, [f"bench-{tag}-{i}" for i in range(jobs)], min_s, max_s)

    async def main() -> dict[str, Any]:
        backend = await shared_backend(CONN_ID)
        if kind == "shared":
            triggers = [KubeflowRunTrigger(handle=h.to_dict(), kubeflow_conn_id=CONN_ID) for h in handles]
        else:
            triggers = [PollingTrigger(h.to_dict(), CONN_ID) for h in handles]
        stalls: list[float] = []
        stalled_at: list[float] = []  # seconds into the phase when each stall ended
        stop = asyncio.Event()

        async def heartbeat() -> None:
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.05)
                now = time.monotonic()
                if now - last - 0.05 > STALL_SECONDS:
                    stalls.append(now - last - 0.05)
                    stalled_at.append(now - started)
                last = now

        fired: dict[str, tuple[float, float]] = {}  # handle id -> (monotonic, wall clock) of the event

        async def one(trigger: Any) -> None:
            async for event in trigger.run():
                fired[event.payload["handle"]["id"]] = (time.monotonic(), time.time())
                return

        started = time.monotonic()
        beat = asyncio.ensure_future(heartbeat())
        before, cpu_before = requests_made(backend), cpu_seconds()
        await asyncio.gather(*(one(t) for t in triggers))
        elapsed = time.monotonic() - started
        stop.set()
        await beat
        return {
            "requests": requests_made(backend) - before,
            "seconds": elapsed,
            "cpu": cpu_seconds() - cpu_before,
            "stalls": stalls,
            "stalled_at": stalled_at,
            "fired": fired,
        }

    result = asyncio.run(main())
    result["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["handles"] = [h.id for h in handles]
    out.send(result)


def delays(result: dict[str, Any], events: dict[str, Any] | None, clock: SucceededClock | None,
           by_condition: bool = False) -> list[float]:
    """Event time minus the job's Succeeded time: the double's own change time, the parent's watch
    (`clock`), or the condition's lastTransitionTime (`by_condition`)."""
    out = []
    for handle_id in result["handles"]:
        fired = result["fired"].get(handle_id)
        if fired is None:
            continue
        namespace, plural, name = handle_id.split("/")
        if events is not None:  # the double's own change times (system-wide monotonic clock)
            done = [at for at, what in events.get(f"{plural}/{namespace}/{name}", []) if what == "Succeeded"]
            if done:
                out.append(fired[0] - done[0])
        elif clock is not None and name in clock.at:
            at = condition_time(clock.condition_at[name]) if by_condition else clock.at[name]
            if at is not None:
                out.append(fired[1] - at)
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--kubeconfig", help="a real cluster (default: the double)")
    parser.add_argument("--namespace", default="default")
    parser.add_argument("--min-seconds", type=float, default=30.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--phases", default="shared,polling")
    parser.add_argument("--specs", default=default_specs())
    args = parser.parse_args()

    ctx = multiprocessing.get_context("spawn")
    double_conn = None
    with tempfile.TemporaryDirectory() as scratch:
        kubeconfig = args.kubeconfig
        if kubeconfig is None:
            double_conn, child_conn = ctx.Pipe()
            ctx.Process(target=serve_double, args=(child_conn, args.specs), daemon=True).start()
            url = double_conn.recv()["url"]
            kubeconfig = str(Path(scratch, "kubeconfig"))
            Path(kubeconfig).write_text(
                f"apiVersion: v1\nkind: Config\ncurrent-context: d\nclusters: [{{name: d, cluster: {{server: '{url}'}}}}]\n"
                "users: [{name: d, user: {token: s3cr3t-token}}]\n"
                f"contexts: [{{name: d, context: {{cluster: d, user: d, namespace: {args.namespace}}}}}]\n"
            )
        rows = []
        for kind in args.phases.split(","):
            clock = server = None
            if double_conn is None:
                clock = SucceededClock(kubeconfig, args.namespace).start()
                server = ApiserverRequests(kubeconfig)
                server_before = server.counts()
            load = LoadSampler()
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
            lags = delays(result, events, clock)
            row = {
                "phase": {"shared": "KubeflowRunTrigger (shared watch)", "polling": "polling trigger (2 s)"}[kind],
                "waits": args.jobs, "fired": len(result["fired"]), "seconds": result["seconds"],
                "rpm": result["requests"] / result["seconds"] * 60, "cpu": result["cpu"], "rss": result["rss_mb"],
                "p50": statistics.median(lags) if lags else float("nan"), "p95": percentile(lags, 0.95),
                "stalls": len(result["stalls"]), "worst": max(result["stalls"], default=0.0), "load": load.stop(),
            }
            if clock is not None:
                clock.stop()
                by_condition = delays(result, None, clock, by_condition=True)
                row["condition_p50_p95"] = f"{statistics.median(by_condition):.3f} / {percentile(by_condition, 0.95):.3f}"
                verbs = ApiserverRequests.delta(server_before, server.counts())
                reads = sum(n for verb, n in verbs.items() if verb in ("GET", "LIST", "WATCH"))
                row["apiserver"] = f"{reads / result['seconds'] * 60:.0f} reads/min {verbs}"
                delete_all(kubeconfig, result["handles"])
            rows.append(row)
            row["stalls_s_at_s"] = [f"{d:.2f}@{t:.0f}" for d, t in zip(result["stalls"], result["stalled_at"], strict=True)]
            notes = ("fired", "load", "condition_p50_p95", "apiserver", "stalls_s_at_s")
            print(_row(rows[-1]), json.dumps({k: row[k] for k in notes if k in row}), flush=True)
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
