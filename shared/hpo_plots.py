"""HPO plots where people look: on the experiment's parent MLflow run, made from its trials' runs.

At the end of an experiment, the trials' nested runs (tag `mlflow.parentRunId`) are read back from
MLflow, turned into an optuna study (parameters typed by the experiment's search space, the
objective's final value), and optuna's matplotlib visualisations are logged to the parent run as
images under `hpo/`: the optimisation history, a parallel coordinate plot and the parameter
importances (which need two finished trials and a parameter that varies).

Best effort, like everything after submission: a missing library or an MLflow outage logs a warning
and the experiment's outcome stands. optuna and matplotlib are imported here only.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from typing import Any

from shared.mlflow_client import PARENT_RUN_TAG, best_effort
from shared.mlflow_handoff import ParentRun
from shared.specs.model import ExperimentSpec, ParameterSpec

log = logging.getLogger(__name__)
ARTIFACT_DIR = "hpo"
PLOTS = ("optimization_history", "parallel_coordinate", "param_importances")


def _distribution(p: ParameterSpec) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    log_scale = (p.distribution or "").lower().startswith("log")
    if p.parameter_type == "double":
        return FloatDistribution(float(p.min), float(p.max), log=log_scale)
    if p.parameter_type == "int":
        return IntDistribution(int(p.min), int(p.max), log=log_scale)
    return CategoricalDistribution(list(p.list))


def _value(p: ParameterSpec, text: str) -> Any:
    if p.parameter_type == "double":
        return float(text)
    if p.parameter_type == "int":
        return int(float(text))
    return text


def study_from_runs(spec: ExperimentSpec, runs: list[Any]) -> Any:
    """An optuna study of the finished trial runs that logged the objective and every parameter."""
    import optuna

    direction = "maximize" if spec.objective.type == "maximize" else "minimize"
    metric = spec.objective.objective_metric_name
    distributions = {p.name: _distribution(p) for p in spec.parameters}
    study = optuna.create_study(direction=direction)
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):
        params = run.data.params
        value = run.data.metrics.get(metric)
        if value is None or any(p.name not in params for p in spec.parameters):
            continue
        try:
            values = {p.name: _value(p, params[p.name]) for p in spec.parameters}
            trial = optuna.trial.create_trial(params=values, distributions=distributions, value=float(value))
        except ValueError:  # a value outside the search space (the run was edited by hand): not this study's
            continue
        study.add_trial(trial)
    return study


def _save(study: Any, name: str, path: str) -> bool:
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    if name == "param_importances" and (
        len(study.trials) < 2 or all(len({t.params[k] for t in study.trials}) < 2 for k in study.trials[0].params)
    ):
        return False
    axes = getattr(plots, f"plot_{name}")(study)
    figure = (axes.flat[0] if hasattr(axes, "flat") else axes).get_figure()
    figure.set_size_inches(9, 5.5)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return True


def log_hpo_plots(mlflow_ctx: Mapping[str, str], spec: ExperimentSpec) -> list[str]:
    """Log the three plots to the parent run; the artifact paths logged (none without MLflow or trials)."""
    if not mlflow_ctx:
        return []
    parent = ParentRun.from_context(mlflow_ctx)

    def make(client: Any) -> list[str]:
        import warnings

        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        runs = client.search_runs(
            [parent.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent.run_id}'", max_results=5000
        )
        study = study_from_runs(spec, runs)
        if not study.trials:
            return []
        logged = []
        with tempfile.TemporaryDirectory(prefix="kubeflow-tasks-hpo-") as scratch, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
            for name in PLOTS:
                path = os.path.join(scratch, f"{name}.png")
                if _save(study, name, path):
                    client.log_artifact(parent.run_id, path, ARTIFACT_DIR)
                    logged.append(f"{ARTIFACT_DIR}/{name}.png")
        return logged

    return best_effort(parent.tracking_uri, "log the HPO plots", make) or []
