"""Katib experiments on this machine: trials are local processes, judged by Katib's rules.

Each trial is the trial template with `${trialParameters.x}` substituted. A batch/v1 Job trial runs
its primary container's command+args as one process group; a PyTorchJob/TFJob trial runs through
`TrainingRunner`, its metrics read from the Master/Chief replica (Katib's primaryPodLabels). Metrics
come from the output in Katib's StdOut format (`metrics.py`), or from the files a File or
TensorFlowEvent collector names, read when the trial's process exits (`metrics_collectors.py`).

Katib's rules (experiment controller `status_util.go`, v0.19), checked after every trial change:
1. goal reached by the best observed trial -> Succeeded `ExperimentGoalReached`;
2. failed + metricsUnavailable != 0 and >= maxFailedTrialCount -> Failed `ExperimentFailed`;
3. succeeded + failed + killed + earlyStopped + metricsUnavailable >= maxTrialCount ->
   Succeeded `ExperimentMaxTrialsReached`;
4. the algorithm has nothing more and no trial is active -> Succeeded `ExperimentSuggestionEndReached`.
Trials still running when the experiment ends are killed (Killed). New trials fill the free slots:
min(parallelTrialCount, maxTrialCount - completed) - active. A Succeeded experiment without an
optimal trial is FAILED (reference §6).

This module is the control loop; a trial's processes are `trial_process`, the median-stop rule
`median_stop`, the algorithms `suggestions`.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from shared import hpo_plots
from shared.backends.local import admission, metrics_collectors
from shared.backends.local.median_stop import MedianStop
from shared.backends.local.metrics import MetricsCollector
from shared.backends.local.runner import RunContext
from shared.backends.local.suggestions import (
    EARLY_STOPPED,
    FAILED,
    KILLED,
    METRICS_UNAVAILABLE,
    OBSERVED_STATES,
    RUNNING,
    SUCCEEDED,
    TrialRecord,
    make_suggester,
)
from shared.backends.local.trial_process import JobProcess, TrainingProcess, primary_text
from shared.errors import SpecError
from shared.specs.model import ExperimentSpec
from shared.status import State, Status

POLL_SECONDS = 0.05
NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s.io/apimachinery utilrand, which Katib uses
TRAINING_KINDS = ("PyTorchJob", "TFJob")

GOAL_REACHED = "ExperimentGoalReached"
MAX_TRIALS_REACHED = "ExperimentMaxTrialsReached"
SUGGESTION_END_REACHED = "ExperimentSuggestionEndReached"
EXPERIMENT_FAILED = "ExperimentFailed"
MESSAGES = {
    GOAL_REACHED: "Experiment has succeeded because Objective goal has reached",
    MAX_TRIALS_REACHED: "Experiment has succeeded because max trial count has reached",
    SUGGESTION_END_REACHED: "Experiment has succeeded because suggestion service has reached the end",
    EXPERIMENT_FAILED: "Experiment has failed because max failed count has reached",
}


def substitute(value: Any, replacements: Mapping[str, str]) -> Any:
    """`value` (a trialSpec) with every `${trialParameters.x}` replaced, in every string."""
    if isinstance(value, str):
        for placeholder, text in replacements.items():
            value = value.replace(placeholder, text)
        return value
    if isinstance(value, Mapping):
        return {k: substitute(v, replacements) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [substitute(v, replacements) for v in value]
    return value


class _SuggestionFailed(Exception):
    """The algorithm raised: Katib marks the suggestion, and so the experiment, failed."""


@dataclass
class _Trial:
    name: str
    index: int
    assignments: dict[str, str]
    collector: MetricsCollector
    log: TextIO
    stop_value: float | None  # the median-stop rule value fixed when the trial started
    process: JobProcess | TrainingProcess | None = None
    state: str = RUNNING
    early_stop: bool = False
    mlflow_run: str | None = None
    metrics_file: Path | None = None  # where a File/TensorFlowEvent collector reads, locally
    started: float = field(default_factory=time.time)


# ---------------------------------------------------------------- the runner


class ExperimentRunner:
    """Runs an ExperimentSpec locally (Runner protocol); see the module docstring for the rules."""

    def __init__(self, spec: ExperimentSpec, ctx: RunContext):
        self.spec = spec
        self.ctx = ctx
        admission.check_runnable(spec)
        self._source = metrics_collectors.file_source(spec)
        self._suggester = make_suggester(spec)
        self._container = self._primary_container()
        self._strategies = dict(spec.objective.metric_strategies)
        self._metric_names = [spec.objective.objective_metric_name, *spec.objective.additional_metric_names]
        self._median = MedianStop.from_spec(spec)
        self._trials: list[_Trial] = []
        self._lock = threading.Lock()  # guards starting trials against a concurrent stop()
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._suggestions_ended = False

    # -- setup checks (SpecError before anything runs)

    def _primary_container(self) -> Mapping[str, Any] | None:
        trial_spec = self.spec.trial_template.trial_spec
        kind = trial_spec.get("kind")
        if kind in TRAINING_KINDS:
            return None
        if kind != "Job":
            raise SpecError(
                "spec.trialTemplate.trialSpec.kind",
                f"local trials run batch/v1 Job, PyTorchJob or TFJob, got {kind!r}",
            )
        containers = trial_spec.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
        wanted = self.spec.trial_template.primary_container_name
        for container in containers:
            if container.get("name") == wanted:
                if not container.get("command") and not container.get("args"):
                    raise SpecError(
                        "spec.trialTemplate.trialSpec",
                        f"container {wanted!r} has no command or args; an image's entrypoint cannot run locally",
                    )
                return container
        raise SpecError(
            "spec.trialTemplate.primaryContainerName", f"no container named {wanted!r} in the trialSpec"
        )

    # -- protocol

    def run(self) -> Status:
        try:
            return self._loop()
        finally:
            self._kill([t for t in self._trials if t.state == RUNNING])
            for trial in self._trials:
                with contextlib.suppress(OSError):
                    trial.log.close()

    def stop(self) -> None:
        with self._lock:
            self._stopping.set()
            running = [t for t in self._trials if t.state == RUNNING]
        self._wake.set()
        self._kill(running)

    # -- the control loop

    def _loop(self) -> Status:
        self._report("Experiment is created")
        changed = True
        while True:
            if self._stopping.is_set():
                return self._cancelled()
            changed |= self._reap()
            if changed:
                reason = self._decide()
                if reason is not None:
                    return self._finish(reason)
                try:
                    changed = self._fill()
                except _SuggestionFailed as exc:
                    return self._finish(EXPERIMENT_FAILED, str(exc))
                if changed:
                    continue
            self._wake.wait(POLL_SECONDS)
            self._wake.clear()

    def _reap(self) -> bool:
        """Conclude the trials that have exited or been early-stopped; True if any did."""
        changed = False
        for trial in self._trials:
            if self._stopping.is_set():
                return changed  # stop() is killing them: they end Killed, not Failed
            if trial.state != RUNNING or trial.process is None:
                continue
            if trial.early_stop:
                trial.process.kill()
                self._conclude(trial, EARLY_STOPPED)
                changed = True
                continue
            outcome = trial.process.poll()
            if outcome is None:
                continue
            if self._source is not None and trial.metrics_file is not None:
                metrics_collectors.collect(self._source, trial.metrics_file, trial.collector, self._trial_log(trial))
            if not outcome:
                state = FAILED
            elif trial.collector.value(self.spec.objective.objective_metric_name, "latest") is None:
                state = METRICS_UNAVAILABLE
            else:
                state = SUCCEEDED
            self._conclude(trial, state)
            changed = True
        return changed

    def _counts(self) -> dict[str, int]:
        counts = {s: 0 for s in (RUNNING, SUCCEEDED, FAILED, KILLED, EARLY_STOPPED, METRICS_UNAVAILABLE)}
        for trial in self._trials:
            counts[trial.state] += 1
        return counts

    def _decide(self) -> str | None:
        """Katib's UpdateExperimentStatusCondition, in its order."""
        counts = self._counts()
        goal = self.spec.objective.goal
        best = self._best()
        if goal is not None and best is not None:
            value = self._objective(best)
            assert value is not None
            if (value >= goal) if self._maximize else (value <= goal):
                return GOAL_REACHED
        failed = counts[FAILED] + counts[METRICS_UNAVAILABLE]
        limit = self.spec.max_failed_trial_count
        if limit is not None and failed != 0 and failed >= limit:
            return EXPERIMENT_FAILED
        completed = len(self._trials) - counts[RUNNING]
        if self.spec.max_trial_count is not None and completed >= self.spec.max_trial_count:
            return MAX_TRIALS_REACHED
        if self._suggestions_ended and counts[RUNNING] == 0:
            return SUGGESTION_END_REACHED
        return None

    def _fill(self) -> bool:
        """Start trials in the free slots; True if any started."""
        active = self._counts()[RUNNING]
        required = self.spec.parallel_trial_count
        if self.spec.max_trial_count is not None:
            completed = len(self._trials) - active
            required = min(required, self.spec.max_trial_count - completed)
        wanted = required - active
        if wanted <= 0 or self._suggestions_ended:
            return False
        try:
            suggestions = self._suggester.suggest(self._history(), wanted)
        except Exception as exc:  # a failure inside the algorithm's library
            raise _SuggestionFailed(f"Suggestion failed: {type(exc).__name__}: {exc}") from exc
        if not suggestions and active == 0:
            self._suggestions_ended = True
            return True
        for assignments in suggestions:
            if not self._start(assignments):
                return False
        return bool(suggestions)

    def _history(self) -> list[TrialRecord]:
        return [TrialRecord(t.name, dict(t.assignments), self._objective(t), t.state) for t in self._trials]

    # -- starting and ending trials

    def _new_name(self) -> str:
        taken = {t.name for t in self._trials}
        while True:
            name = f"{self.spec.name}-{''.join(random.choices(NAME_ALPHABET, k=8))}"
            if name not in taken:
                return name

    def _start(self, assignments: dict[str, str]) -> bool:
        name = self._new_name()
        folder = self.ctx.workdir / "trials" / name
        folder.mkdir(parents=True, exist_ok=True)
        trial = _Trial(
            name=name,
            index=len(self._trials) + 1,
            assignments=assignments,
            collector=MetricsCollector(self._metric_names, self.spec.metrics_format),
            log=(folder / "log.txt").open("a", encoding="utf-8"),
            stop_value=self._median_value(),
        )
        trial_spec = self._trial_spec(trial)
        if self._source is not None:
            trial_spec, trial.metrics_file = metrics_collectors.localize(self._source, trial_spec, folder / "root")
        env = dict(self._container_env(trial_spec)) | dict(self.ctx.env) | {"KATIB_TRIAL_NAME": name}
        if self.ctx.mlflow:
            from shared import mlflow_handoff

            trial.mlflow_run = mlflow_handoff.start_trial_run(
                self.ctx.mlflow, trial_name=name, parameters=assignments
            )
            env |= mlflow_handoff.trial_env(self.ctx.mlflow, trial.mlflow_run)
        with self._lock:
            if self._stopping.is_set():
                trial.log.close()
                return False
            self._trials.append(trial)
            on_line = self._on_line(trial)
            try:
                if self._container is None:
                    trial.process = TrainingProcess(trial_spec, self.spec.base_dir, folder, env, on_line)
                else:
                    trial.process = JobProcess(
                        self._find_container(trial_spec),
                        env,
                        self._cwd(trial_spec),
                        on_line,
                        self.ctx.registry,
                    )
            except OSError as exc:  # the command does not exist: the trial's pod would fail to start
                trial.log.write(f"cannot start trial: {exc}\n")
                trial.process = None
                self._conclude(trial, FAILED)
                return True
        self._write_record(trial)
        self._report(f"Trial {name} is running")
        return True

    def _trial_spec(self, trial: _Trial) -> dict[str, Any]:
        template = self.spec.trial_template
        trial_spec = template.trial_spec
        metadata = trial_spec.get("metadata") or {}
        labels = {**(metadata.get("labels") or {}), "katib.kubeflow.org/experiment": self.spec.name}
        meta = {
            "${trialSpec.Name}": trial.name,
            "${trialSpec.Namespace}": self.spec.namespace or "default",
            "${trialSpec.Kind}": str(trial_spec.get("kind", "")),
            "${trialSpec.APIVersion}": str(trial_spec.get("apiVersion", "")),
        }
        meta |= {f"${{trialSpec.Labels[{k}]}}": str(v) for k, v in labels.items()}
        meta |= {
            f"${{trialSpec.Annotations[{k}]}}": str(v) for k, v in (metadata.get("annotations") or {}).items()
        }
        replacements = {}
        for parameter in template.trial_parameters:
            reference = parameter.reference
            value = trial.assignments.get(reference, meta.get(reference, reference))
            replacements[f"${{trialParameters.{parameter.name}}}"] = value
        substituted = substitute(trial_spec, replacements)
        substituted.setdefault("metadata", {})["name"] = trial.name
        return substituted

    def _find_container(self, trial_spec: Mapping[str, Any]) -> Mapping[str, Any]:
        containers = trial_spec["spec"]["template"]["spec"]["containers"]
        wanted = self.spec.trial_template.primary_container_name
        return next(c for c in containers if c.get("name") == wanted)

    def _container_env(self, trial_spec: Mapping[str, Any]) -> dict[str, str]:
        if self._container is None:
            return {}
        return {
            e["name"]: str(e["value"])
            for e in self._find_container(trial_spec).get("env") or []
            if "name" in e and "value" in e
        }

    def _cwd(self, trial_spec: Mapping[str, Any]) -> str:
        working_dir = self._find_container(trial_spec).get("workingDir")
        if working_dir:
            path = Path(self.spec.base_dir, working_dir)
            if path.is_dir():
                return str(path)
        return self.spec.base_dir

    def _on_line(self, trial: _Trial) -> Callable[[str], None]:
        """Log every line; feed the primary container's lines to the collector and the stop rule."""
        objective = self.spec.objective.objective_metric_name

        training = self._container is None

        def on_line(line: str) -> None:
            if trial.log.closed:
                return
            trial.log.write(line + "\n")
            trial.log.flush()
            text = primary_text(line) if training else line
            if text is None or self._source is not None:  # a File/TensorFlowEvent collector reads files
                return
            found = trial.collector.feed(text)
            if trial.stop_value is not None and any(name == objective for name, _ in found):
                if self._should_stop(trial):
                    trial.early_stop = True
                    self._wake.set()

        return on_line

    def _trial_log(self, trial: _Trial) -> Callable[[str], None]:
        def write(line: str) -> None:
            if not trial.log.closed:
                trial.log.write(line + "\n")
                trial.log.flush()
            self.ctx.log(line)

        return write

    def _should_stop(self, trial: _Trial) -> bool:
        assert self._median is not None and trial.stop_value is not None
        return self._median.should_stop(trial.collector.objective_values, trial.stop_value, self._maximize)

    def _median_value(self) -> float | None:
        """The medianstop rule value for a trial starting now, or None (no rule yet)."""
        if self._median is None:
            return None
        succeeded = [t.collector.objective_values for t in self._trials if t.state == SUCCEEDED]
        return self._median.rule_value(succeeded)

    def _conclude(self, trial: _Trial, state: str) -> None:
        trial.state = state
        self._write_record(trial)
        if trial.mlflow_run is not None:
            from shared import mlflow_handoff

            mlflow_state = {SUCCEEDED: "FINISHED", EARLY_STOPPED: "FINISHED", KILLED: "KILLED"}.get(
                state, "FAILED"
            )
            mlflow_handoff.finish_trial_run(
                self.ctx.mlflow, trial.mlflow_run, metrics=self._metrics(trial), state=mlflow_state
            )
        finished = sum(1 for t in self._trials if t.state != RUNNING)
        self.ctx.log(self._trial_line(trial, finished))
        self._report(f"Trial {trial.name} is {state}")

    def _kill(self, trials: list[_Trial]) -> None:
        threads = [threading.Thread(target=t.process.kill) for t in trials if t.process is not None]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # -- results

    @property
    def _maximize(self) -> bool:
        return self.spec.objective.type == "maximize"

    def _objective(self, trial: _Trial) -> float | None:
        name = self.spec.objective.objective_metric_name
        return trial.collector.value(name, self._strategies.get(name, "min" if not self._maximize else "max"))

    def _metrics(self, trial: _Trial) -> dict[str, float]:
        return {
            name: value
            for name in self._metric_names
            if (value := trial.collector.value(name, self._strategies.get(name, "latest"))) is not None
        }

    def _best(self) -> _Trial | None:
        """The optimal trial: the best objective among trials that finished with an observation."""
        best, best_value = None, None
        for trial in self._trials:
            value = self._objective(trial) if trial.state in OBSERVED_STATES else None
            if value is None:
                continue
            if best_value is None or (value > best_value if self._maximize else value < best_value):
                best, best_value = trial, value
        return best

    def _outputs(self) -> dict[str, Any]:
        counts = self._counts()
        best = self._best()
        return {
            "best_trial": best.name if best else "",
            "best_parameters": dict(best.assignments) if best else {},
            "best_metrics": self._metrics(best) if best else {},
            "objective_metric": self.spec.objective.objective_metric_name,
            "trials": len(self._trials),
            "trials_succeeded": counts[SUCCEEDED],
            "trials_failed": counts[FAILED],
            "trials_killed": counts[KILLED],
            "trials_early_stopped": counts[EARLY_STOPPED],
            "trials_metrics_unavailable": counts[METRICS_UNAVAILABLE],
        }

    def _trial_line(self, trial: _Trial, finished: int) -> str:
        objective = self.spec.objective.objective_metric_name
        total = self.spec.max_trial_count if self.spec.max_trial_count is not None else "?"
        params = " ".join(f"{k}={v}" for k, v in trial.assignments.items())
        value = self._objective(trial)
        result = f"{objective}={value:g}" if value is not None else f"no {objective}"
        best = self._best()
        best_text = (
            f"best {objective}={self._objective(best):g}, trial {best.name}" if best else "no best yet"
        )
        return f"trial {finished}/{total} {trial.name} {trial.state}: {params} -> {result} ({best_text})"

    def _write_record(self, trial: _Trial) -> None:
        record = {
            "name": trial.name,
            "assignments": [{"name": k, "value": v} for k, v in trial.assignments.items()],
            "state": trial.state,
            "metrics": [{"name": k, **s.to_dict()} for k, s in trial.collector.metrics.items()],
            "started": trial.started,
            "mlflow_run_id": trial.mlflow_run,
        }
        path = self.ctx.workdir / "trials" / trial.name / "trial.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)

    def _report(self, message: str) -> None:
        self.ctx.report(Status(State.RUNNING, "ExperimentRunning", message, self._outputs()))

    def _finish(self, reason: str, message: str | None = None) -> Status:
        running = [t for t in self._trials if t.state == RUNNING]
        self._kill(running)
        for trial in running:
            self._conclude(trial, KILLED)
        message = message or MESSAGES[reason]
        outputs = self._outputs()
        hpo_plots.log_hpo_plots(self.ctx.mlflow, self.spec)
        if reason == EXPERIMENT_FAILED:
            return Status(State.FAILED, reason, message, outputs)
        if not outputs["best_trial"]:
            return Status(
                State.FAILED, reason, f"{message}, but no trial produced the objective metric", outputs
            )
        return Status(State.SUCCEEDED, reason, message, outputs)

    def _cancelled(self) -> Status:
        running = [t for t in self._trials if t.state == RUNNING]
        self._kill(running)
        for trial in running:
            self._conclude(trial, KILLED)
        return Status(
            State.CANCELLED,
            "ExperimentCancelled",
            "Experiment was cancelled; its trials were killed",
            self._outputs(),
        )
