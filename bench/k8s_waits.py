"""1,000 concurrent waits in one process: the shared watch hub and KFP poller versus per-object polling.

The double (tests/k8s_double) runs in a child process, so the CPU figures are the waiting process's
own (`resource.getrusage`, all threads). Four phases in one run, each on 1,000 fresh objects:

- `watch hub`:   PyTorchJobs awaited with `KubernetesBackend.watch` (one shared LIST+WATCH).
- `job polling`: the same number of PyTorchJobs, each polled with `status()` every 5 s, as the
  training SDK's `wait_for_job_conditions` and kfp's `wait_for_run_completion` do (start times
  spread over the first 5 s, as tasks that started at different moments would be).
- `kfp poller`:  KFP runs awaited with `watch` (one `list_runs` per 100 runs per interval, 3 s).
- `kfp polling`: KFP runs, each polled with `get_run` every 5 s.

Per phase: API requests per minute while waiting (from the double's request log), CPU seconds of
this process while waiting, and the delay from a state change on the double (`events_at`, taken
with the system-wide monotonic clock) to the waiter seeing it (p50, p95 over every change that
happened after the waiter's first look).

Run: `.venv/bin/python bench/k8s_waits.py [--objects 1000] [--min-seconds 10 --max-seconds 50]`;
record the printed table in bench/RESULTS-kubernetes.md.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.cluster import cpu_seconds, default_specs, percentile, pytorch_job, serve_double  # noqa: E402

POLL_SECONDS = 5.0


def pipeline_run(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kubeflow-tasks/v1",
        "kind": "PipelineRun",
        "metadata": {"name": name},
        "spec": {
            "pipeline": str(REPO / "tests/data/specs/pipelines/add.yaml"),
            "parameters": {"a": 1, "b": 2},
        },
    }


def submit_all(backend: Any, specs: list[Any], prefix: str) -> list[Any]:
    from shared.backends.base import SubmitContext

    with ThreadPoolExecutor(16) as pool:
        return list(
            pool.map(
                lambda i: backend.submit(specs[i], f"{prefix}/{i}", 1, SubmitContext()), range(len(specs))
            )
        )


async def wait_shared(backend: Any, handles: list[Any], seen: dict[str, list[tuple[float, str]]]) -> None:
    async def one(handle: Any) -> None:
        async for _, status in backend.watch([handle]):
            seen[handle.id].append((time.monotonic(), status.raw_state))

    await asyncio.gather(*(one(h) for h in handles))


async def wait_polling(backend: Any, handles: list[Any], seen: dict[str, list[tuple[float, str]]]) -> None:
    async def one(handle: Any) -> None:
        await asyncio.sleep(random.uniform(0, POLL_SECONDS))
        while True:
            status = await asyncio.to_thread(backend.status, handle)
            seen[handle.id].append((time.monotonic(), status.raw_state))
            if status.terminal:
                return
            await asyncio.sleep(POLL_SECONDS)

    await asyncio.gather(*(one(h) for h in handles))


def delays(
    handles: list[Any], seen: dict[str, list[tuple[float, str]]], events: dict[str, Any]
) -> list[float]:
    """For every state change on the double after the waiter's first look, how long until the waiter
    saw that state (changes before it, e.g. during submission, are nobody's delay)."""
    result = []
    for handle in handles:
        if not seen[handle.id]:
            continue
        first_look = seen[handle.id][0][0]
        if handle.id.startswith("kfp/"):
            changes = events.get(f"runs/{handle.id[4:]}", [])
        else:
            namespace, plural, name = handle.id.split("/")
            changes = events.get(f"{plural}/{namespace}/{name}", [])
        for at, what in changes:
            if at <= first_look:
                continue
            first = next((t for t, raw in seen[handle.id] if raw == what and t >= at), None)
            if first is not None:
                result.append(first - at)
    return result


def phase(name: str, conn: Any, backend: Any, handles: list[Any], waiter: Any) -> dict[str, Any]:
    seen: dict[str, list[tuple[float, str]]] = {h.id: [] for h in handles}
    conn.send("requests")
    requests_before = conn.recv()
    cpu_before = cpu_seconds()
    started = time.monotonic()

    async def main() -> None:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(64))
        await waiter(backend, handles, seen)

    asyncio.run(main())
    elapsed = time.monotonic() - started
    cpu = cpu_seconds() - cpu_before
    conn.send("requests")
    requests = conn.recv() - requests_before
    conn.send("events")
    lags = sorted(delays(handles, seen, conn.recv()))
    return {
        "phase": name,
        "waits": len(handles),
        "seconds": elapsed,
        "requests": requests,
        "requests_per_minute": requests / elapsed * 60,
        "cpu_seconds": cpu,
        "changes": len(lags),
        "p50": statistics.median(lags) if lags else float("nan"),
        "p95": percentile(lags, 0.95),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--min-seconds", type=float, default=10.0)
    parser.add_argument("--max-seconds", type=float, default=50.0)
    parser.add_argument("--specs", default=default_specs())
    args = parser.parse_args()

    from shared.backends.kubernetes import KubernetesBackend
    from shared.specs import load_spec

    ctx = multiprocessing.get_context("spawn")
    conn, child_conn = ctx.Pipe()
    mid = (args.min_seconds + args.max_seconds) / 2
    child = ctx.Process(
        target=serve_double, args=(child_conn, args.specs), kwargs={"kfp_run_seconds": mid}, daemon=True
    )
    child.start()
    urls = conn.recv()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        kubeconfig = Path(scratch, "kubeconfig")
        kubeconfig.write_text(
            f"apiVersion: v1\nkind: Config\ncurrent-context: d\nclusters: [{{name: d, cluster: {{server: '{urls['url']}'}}}}]\n"
            "users: [{name: d, user: {token: s3cr3t-token}}]\n"
            "contexts: [{name: d, context: {cluster: d, user: d, namespace: default}}]\n"
        )
        backend = KubernetesBackend(
            kubeconfig=str(kubeconfig), kfp_host=urls["kfp_url"], kfp_token=urls["kfp_token"]
        )
        for name, waiter in (("watch hub", wait_shared), ("job polling (5 s)", wait_polling)):
            tag = "hub" if waiter is wait_shared else "poll"
            specs = [
                load_spec(pytorch_job(f"{tag}-{i}", random.uniform(args.min_seconds, args.max_seconds)))
                for i in range(args.objects)
            ]
            handles = submit_all(backend, specs, f"bench/{tag}")
            rows.append(phase(name, conn, backend, handles, waiter))
            print(_row(rows[-1]), flush=True)
        for name, waiter in (("kfp poller (3 s)", wait_shared), ("kfp polling (5 s)", wait_polling)):
            tag = "kfp-hub" if waiter is wait_shared else "kfp-poll"
            specs = [load_spec(pipeline_run(f"{tag}-{i}")) for i in range(args.objects)]
            handles = submit_all(backend, specs, f"bench/{tag}")
            rows.append(phase(name, conn, backend, handles, waiter))
            print(_row(rows[-1]), flush=True)
    conn.send("stop")
    conn.recv()
    child.join(10)
    print()
    print("| phase | waits | seconds | requests/min | CPU s | changes | delay p50 s | delay p95 s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(_row(row))


def _row(row: dict[str, Any]) -> str:
    return (
        f"| {row['phase']} | {row['waits']} | {row['seconds']:.0f} | {row['requests_per_minute']:.0f} | "
        f"{row['cpu_seconds']:.1f} | {row['changes']} | {row['p50']:.3f} | {row['p95']:.3f} |"
    )


if __name__ == "__main__":
    main()
