"""A DolphinScheduler worker, emulated closely enough to run generated SHELL task definitions.

What a 3.2/3.3 worker does with a SHELL task, and what this harness does the same way:
- parameters: built-ins (`system.*`), workflow (global) parameters, the upstream tasks' OUT
  parameters (varPool) and the task's local IN parameters (local wins; values holding `$` are
  resolved against the rest first), all as strings;
- the script: `rawScript` with CRLF turned into LF, then `${...}` substituted as TEXT exactly as
  `PlaceholderUtils.replacePlaceholders(script, params, ignoreUnresolvable=true)` does (Spring's
  PropertyPlaceholderHelper: nested braces, recursive resolution of keys and of resolved values,
  circular references rejected, unknown names left as they are); date expressions `$[...]` are not
  emulated (our scripts contain none);
- the file: `#!/bin/bash`, `cd` to the task's own directory, the body; run as `bash <file>` with
  stderr merged into stdout;
- outputs: every line goes through TaskOutputParameterParser's algorithm (`${setValue(` or
  `#{setValue(` anywhere in a line, up to `)}` across at most 1024 lines, `split("=", 2)`, no
  trimming); only names declared `direct=OUT` become the task's varPool;
- the end: exit 0 is SUCCESS, 137 or 143 (SIGKILL, SIGTERM) is KILL, anything else FAILURE;
  FAILURE is retried `failRetryTimes` times (after `failRetryInterval` minutes, scaled here), KILL
  never; with timeoutFlag OPEN and strategy FAILED/WARNFAILED the worker sends SIGTERM to the
  script's process at the timeout (`process.destroy()`: the direct child only) and SIGKILL 5 s
  later (state KILL);
- a stop from the UI or API (`TaskRun.stop()`), as TaskInstanceKillOperationFunction does up to
  3.3: `kill -9` on every pid that `pstree -p <pid>` lists for the task's process;
- failover: when a worker is lost, the master dispatches the same task instance again (same
  workflow instance id and task code); `TaskRun.lose_worker()` plus `Worker.run()` model that.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

SUCCESS, FAILURE, KILL = "SUCCESS", "FAILURE", "KILL"
_ids = itertools.count(1000)
HOST_MARKER = "KFT_HARNESS_HOST"  # in every task's environment: which emulated host ran it


# ------------------------------------------------------------------ ${...} substitution (Spring's helper)


class CircularPlaceholder(ValueError):
    pass


def substitute(text: str, params: Mapping[str, str]) -> str:
    """PropertyPlaceholderHelper("${", "}", null, ignoreUnresolvable=true).replacePlaceholders."""
    return _parse(text, params, set())


def _end_of(buf: str, start: int) -> int:
    index, nested = start + 2, 0
    while index < len(buf):
        if buf.startswith("}", index):
            if nested:
                nested -= 1
                index += 1
            else:
                return index
        elif buf.startswith("{", index):
            nested += 1
            index += 1
        else:
            index += 1
    return -1


def _parse(value: str, params: Mapping[str, str], visited: set[str]) -> str:
    result = value
    start = result.find("${")
    while start != -1:
        end = _end_of(result, start)
        if end == -1:
            break
        original = result[start + 2 : end]
        if original in visited:
            raise CircularPlaceholder(f"Circular placeholder reference '{original}' in property definitions")
        visited.add(original)
        key = _parse(original, params, visited)
        resolved = params.get(key)
        if resolved is not None:
            resolved = _parse(resolved, params, visited)
            result = result[:start] + resolved + result[end + 1 :]
            start = result.find("${", start + len(resolved))
        else:
            start = result.find("${", end + 1)
        visited.discard(original)
    return result


# ------------------------------------------------------------------ setValue parsing


class OutputParser:
    """TaskOutputParameterParser: `${setValue(k=v)}` / `#{setValue(k=v)}` from log lines."""

    MAX_ROWS = 1024

    def __init__(self) -> None:
        self.params: dict[str, str] = {}
        self._current: list[str] | None = None

    def feed(self, line: str) -> None:
        if self._current is not None:
            if len(self._current) > self.MAX_ROWS:
                self._current = None
                return
            end = line.find(")}")
            if end == -1:
                self._current.append(line)
                return
            self._current.append(line[: end + 2])
            self._finish("\n".join(self._current))
            self._current = None
            if end + 2 != len(line):
                self.feed(line[end + 2 :])
            return
        begin = line.find("${setValue(")
        if begin == -1:
            begin = line.find("#{setValue(")
        if begin == -1:
            return
        self._current = []
        self.feed(line[begin:])

    def _finish(self, expression: str) -> None:
        if not expression.endswith(")}"):
            return
        body = expression[11:-2]
        if "=" not in body:
            return
        key, value = body.split("=", 1)
        self.params[key] = value


# ------------------------------------------------------------------ running one task


@dataclass
class Attempt:
    state: str
    exit_code: int
    log: str
    outputs: dict[str, str]  # every setValue seen (declared or not)


@dataclass
class TaskResult:
    state: str
    attempts: list[Attempt]
    var_pool: dict[str, str]  # the declared OUT parameters of the last attempt

    @property
    def log(self) -> str:
        return self.attempts[-1].log


def _exit_state(code: int) -> str:
    if code == 0:
        return SUCCESS
    if code in (137, 143):
        return KILL
    return FAILURE


class TaskRun:
    """One attempt of one task: a `bash` process whose merged output is parsed as it arrives."""

    def __init__(self, script: Path, env: Mapping[str, str], timeout_s: float | None):
        self.env = dict(env)
        self.lines: list[str] = []
        self.parser = OutputParser()
        self._seen = threading.Condition()
        self.proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=script.parent,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,  # so `lose_worker` can take the whole tree like a dying host
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._timer = None
        if timeout_s is not None:
            self._timer = threading.Timer(timeout_s, self._timeout_kill)
            self._timer.daemon = True
            self._timer.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            with self._seen:
                self.lines.append(line)
                self.parser.feed(line)
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def _timeout_kill(self) -> None:
        """AbstractCommandExecutor: process.destroy() (SIGTERM to the direct child), then
        destroyForcibly() 5 s later."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def wait_for_output(self, name: str, timeout: float = 60.0) -> str:
        """Block until the script has printed `${setValue(name=...)}`; its value."""
        deadline = time.monotonic() + timeout
        with self._seen:
            while name not in self.parser.params:
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no setValue({name}=...) in:\n" + "\n".join(self.lines[-40:]))
                self._seen.wait(min(left, 0.2))
            return self.parser.params[name]

    def signal(self, sig: int) -> None:
        """What the worker's kill does: a signal to the script's process (bash, or what it exec'd)."""
        self.proc.send_signal(sig)

    def stop(self) -> None:
        """A stop from the UI or API on 3.2/3.3: `kill -9` of the task's process tree, found with pstree."""
        tree = subprocess.run(["pstree", "-p", str(self.proc.pid)], capture_output=True, text=True).stdout
        pids = re.findall(r"\((\d+)\)", tree)
        if pids:
            subprocess.run(["kill", "-9", *pids], capture_output=True)

    def lose_worker(self) -> None:
        """The worker host dies: everything it ran is SIGKILLed at once, no cleanup anywhere.

        That is the task's process group and the guards its CLIs started outside it (the local
        backend's runs stand in for remote work, so they live on).
        """
        os.killpg(self.proc.pid, signal.SIGKILL)
        host = self.env.get(HOST_MARKER)
        for proc in psutil.process_iter(["cmdline"]):
            try:
                if "shared.guard" in (proc.info["cmdline"] or []) and proc.environ().get(HOST_MARKER) == host:
                    proc.kill()
            except psutil.Error:
                pass

    def wait(self, timeout: float = 600) -> Attempt:
        code = self.proc.wait(timeout)
        if code < 0:  # Java's exitValue() of a signalled process is 128 + signal
            code = 128 - code
        self._reader.join(10)
        if self._timer is not None:
            self._timer.cancel()
        return Attempt(_exit_state(code), code, "\n".join(self.lines), dict(self.parser.params))


@dataclass
class Worker:
    """Runs task definitions (the JSON pydolphinscheduler generates) like a DolphinScheduler worker.

    `workflow_instance_id` is fixed per Worker (one workflow instance); `retry_interval_scale` turns
    failRetryInterval minutes into seconds of real waiting (0: retry at once).
    """

    root: Path
    env: Mapping[str, str]
    workflow_instance_id: int = field(default_factory=lambda: next(_ids))
    workflow_name: str = "wf"
    workflow_code: int = 1
    project: str = "project-pydolphin"
    global_params: Mapping[str, str] = field(default_factory=dict)
    schedule_time: datetime = field(default_factory=datetime.now)
    retry_interval_scale: float = 0.0

    def builtins(self, task: Mapping[str, Any], task_instance_id: int) -> dict[str, str]:
        now = self.schedule_time
        return {
            "system.workflow.instance.id": str(self.workflow_instance_id),
            "system.workflow.definition.name": self.workflow_name,
            "system.workflow.definition.code": str(self.workflow_code),
            "system.project.name": self.project,
            "system.task.definition.name": task["name"],
            "system.task.definition.code": str(task["code"]),
            "system.task.instance.id": str(task_instance_id),
            "system.task.execute.path": str(self.task_dir(task, task_instance_id)),
            "system.biz.date": (now - timedelta(days=1)).strftime("%Y%m%d"),
            "system.biz.curdate": now.strftime("%Y%m%d"),
            "system.datetime": now.strftime("%Y%m%d%H%M%S"),
        }

    def task_dir(self, task: Mapping[str, Any], task_instance_id: int) -> Path:
        return self.root / f"{self.workflow_instance_id}" / f"{task['code']}_{task_instance_id}"

    def params_map(self, task: Mapping[str, Any], var_pool: Mapping[str, str], task_instance_id: int) -> dict[str, str]:
        params = {**self.builtins(task, task_instance_id), **self.global_params, **var_pool}
        local_in = {
            p["prop"]: p.get("value") or ""
            for p in task["taskParams"].get("localParams") or []
            if p["direct"] == "IN"
        }
        for name, value in local_in.items():
            if value == "" and name in var_pool:
                continue  # an empty local IN parameter takes the upstream value
            params[name] = substitute(value, params) if "$" in value else value
        return params

    def start(self, task: Mapping[str, Any], var_pool: Mapping[str, str] | None = None) -> TaskRun:
        """Start one attempt (a new task instance id) of `task`."""
        instance_id = next(_ids)
        params = self.params_map(task, var_pool or {}, instance_id)
        body = substitute(task["taskParams"]["rawScript"].replace("\r\n", "\n"), params)
        folder = self.task_dir(task, instance_id)
        folder.mkdir(parents=True, exist_ok=True)
        script = folder / f"{self.workflow_instance_id}_{instance_id}.command"
        script.write_text(f"#!/bin/bash\nBASEDIR=$(cd `dirname $0`; pwd)\ncd $BASEDIR\n{body}\n")
        script.chmod(0o755)
        timeout_s = None
        if task.get("timeoutFlag") == "OPEN" and task.get("timeoutNotifyStrategy") in ("FAILED", "WARNFAILED"):
            timeout_s = float(task["timeout"]) * 60
        return TaskRun(script, {**self.env, HOST_MARKER: str(self.workflow_instance_id)}, timeout_s)

    def run(
        self,
        task: Mapping[str, Any],
        var_pool: Mapping[str, str] | None = None,
        on_start: Callable[[TaskRun], None] | None = None,
    ) -> TaskResult:
        """Run `task` to its end: FAILURE retried failRetryTimes times, KILL final."""
        declared = {p["prop"] for p in task["taskParams"].get("localParams") or [] if p["direct"] == "OUT"}
        attempts: list[Attempt] = []
        for number in range(int(task.get("failRetryTimes") or 0) + 1):
            if number:
                time.sleep(float(task.get("failRetryInterval") or 0) * self.retry_interval_scale)
            run = self.start(task, var_pool)
            if on_start is not None:
                on_start(run)
            attempt = run.wait()
            attempts.append(attempt)
            if attempt.state != FAILURE:
                break
        last = attempts[-1]
        outputs = {k: v for k, v in last.outputs.items() if k in declared}
        return TaskResult(last.state, attempts, outputs if last.state == SUCCESS else {})

    def run_workflow(self, tasks: list[Mapping[str, Any]], relations: list[Mapping[str, Any]]) -> dict[str, TaskResult]:
        """Run a workflow's task definitions in dependency order; each task's varPool is the merge
        of its upstream tasks' varPools and OUT parameters. Stops at the first task that does not
        succeed (as a workflow with default failure strategy END does)."""
        by_code = {t["code"]: t for t in tasks}
        upstream: dict[int, list[int]] = {code: [] for code in by_code}
        for rel in relations:
            if rel["preTaskCode"]:
                upstream[rel["postTaskCode"]].append(rel["preTaskCode"])
        pools: dict[int, dict[str, str]] = {}
        results: dict[str, TaskResult] = {}
        pending = list(by_code)
        while pending:
            ready = [c for c in pending if all(u in pools for u in upstream[c])]
            assert ready, "cycle in the workflow"
            for code in ready:
                pending.remove(code)
                pool: dict[str, str] = {}
                for up in upstream[code]:
                    pool.update(pools[up])
                result = self.run(by_code[code], pool)
                results[by_code[code]["name"]] = result
                if result.state != SUCCESS:
                    return results
                pools[code] = {**pool, **result.var_pool}
        return results
