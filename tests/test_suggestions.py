"""Katib's suggestion algorithms with the real libraries (hyperopt, optuna, scikit-optimize)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from shared.backends.local.suggestions import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    TrialRecord,
    make_suggester,
)
from shared.errors import SpecError
from shared.specs import ExperimentSpec, parse_experiment

PARAMETERS = [
    {
        "name": "lr",
        "parameterType": "double",
        "feasibleSpace": {"min": "0.001", "max": "0.1", "distribution": "logUniform"},
    },
    {"name": "layers", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "8"}},
    {"name": "momentum", "parameterType": "double", "feasibleSpace": {"min": "0.5", "max": "0.9"}},
    {"name": "optimizer", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam", "ftrl"]}},
    {"name": "batch", "parameterType": "discrete", "feasibleSpace": {"list": ["16", "32", "64"]}},
]
GRID_PARAMETERS = [
    {"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.1", "max": "0.3", "step": "0.1"}},
    {"name": "layers", "parameterType": "int", "feasibleSpace": {"min": "2", "max": "6", "step": "2"}},
    {"name": "optimizer", "parameterType": "categorical", "feasibleSpace": {"list": ["sgd", "adam"]}},
]
SEEDED = {
    "random": {"random_state": "7"},
    "tpe": {"random_state": "7", "gamma": "0.3", "prior_weight": "1.5", "n_EI_candidates": "12"},
    "grid": {"seed": "7"},
    "multivariate-tpe": {"seed": "7", "n_startup_trials": "3", "n_ei_candidates": "12"},
    "bayesianoptimization": {
        "random_state": "7",
        "n_initial_points": "3",
        "base_estimator": "GP",
        "acq_func": "EI",
        "acq_optimizer": "sampling",
    },
    "cmaes": {"random_state": "7", "sigma": "0.3", "restart_strategy": "none"},
    "sobol": {"random_state": "7"},
}


def experiment(
    algorithm: str,
    settings: dict[str, str] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    objective: str = "minimize",
    parallel: int = 3,
) -> ExperimentSpec:
    """An Experiment manifest as a user writes it, parsed by the spec loader."""
    parameters = parameters or (GRID_PARAMETERS if algorithm == "grid" else PARAMETERS)
    manifest = {
        "apiVersion": "kubeflow.org/v1beta1",
        "kind": "Experiment",
        "metadata": {"name": "suggest"},
        "spec": {
            "objective": {"type": objective, "objectiveMetricName": "loss"},
            "algorithm": {
                "algorithmName": algorithm,
                "algorithmSettings": [{"name": k, "value": v} for k, v in (settings or {}).items()],
            },
            "parallelTrialCount": parallel,
            "maxTrialCount": 50,
            "parameters": parameters,
            "trialTemplate": {
                "primaryContainerName": "main",
                "trialParameters": [{"name": p["name"], "reference": p["name"]} for p in parameters],
                "trialSpec": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "name": "main",
                                        "image": "python:3.11",
                                        "command": [
                                            "python",
                                            "-c",
                                            "pass",
                                            *(f"${{trialParameters.{p['name']}}}" for p in parameters),
                                        ],
                                    }
                                ]
                            }
                        }
                    },
                },
            },
        },
    }
    return parse_experiment(manifest, "/tmp")


def loss(assignments: dict[str, str]) -> float:
    value = (float(assignments["layers"]) - 4) ** 2
    if "lr" in assignments:
        value += abs(math.log10(float(assignments["lr"])) + 2)
    return value + (0.5 if assignments.get("optimizer") == "sgd" else 0.0)


def drive(spec: ExperimentSpec, rounds: int = 3, count: int = 3) -> list[dict[str, str]]:
    """Ask `count` suggestions per round, 'run' them (one of each round fails), and return all asked."""
    suggester = make_suggester(spec)
    history: list[TrialRecord] = []
    asked: list[dict[str, str]] = []
    for r in range(rounds):
        batch = suggester.suggest(history, count)
        asked += batch
        for i, assignments in enumerate(batch):
            failed = i == 0 and r == rounds - 1
            history.append(
                TrialRecord(
                    f"t{len(history)}",
                    assignments,
                    None if failed else loss(assignments),
                    FAILED if failed else SUCCEEDED,
                )
            )
    return asked


def assert_in_space(spec: ExperimentSpec, assignments: dict[str, str]) -> None:
    assert set(assignments) == {p.name for p in spec.parameters}
    for param in spec.parameters:
        text = assignments[param.name]
        if param.parameter_type == "int":
            assert text == str(int(text)), text
            assert int(param.min) <= int(text) <= int(param.max)
        elif param.parameter_type == "double":
            value = float(text)
            assert text == repr(value)
            assert float(param.min) - 1e-12 <= value <= float(param.max) + 1e-12, (param.name, text)
        else:
            assert text in param.list


@pytest.mark.parametrize("algorithm", sorted(SEEDED))
def test_suggestions_stay_in_the_search_space_and_are_reproducible(algorithm: str) -> None:
    spec = experiment(algorithm, SEEDED[algorithm])
    # Gaussian-process fits are slow on two cores: a shorter run still reaches the model-based asks.
    rounds, count = (2, 2) if algorithm == "bayesianoptimization" else (3, 3)
    first = drive(spec, rounds, count)
    assert len(first) == rounds * count
    for assignments in first:
        assert_in_space(spec, assignments)
    assert drive(spec, rounds, count) == first, "the same seed and history must give the same suggestions"


def test_objective_direction_is_followed() -> None:
    """After its startup trials, TPE proposes near the best region, for maximize as for minimize."""
    for objective, sign in (("minimize", 1), ("maximize", -1)):
        spec = experiment(
            "tpe",
            {"random_state": "3"},
            objective=objective,
            parallel=1,
            parameters=[
                {"name": "layers", "parameterType": "int", "feasibleSpace": {"min": "0", "max": "100"}}
            ],
        )
        suggester = make_suggester(spec)
        history: list[TrialRecord] = []
        for i in range(30):
            (assignments,) = suggester.suggest(history, 1)
            history.append(
                TrialRecord(f"t{i}", assignments, sign * (int(assignments["layers"]) - 80) ** 2, SUCCEEDED)
            )
        late = [int(r.assignments["layers"]) for r in history[-10:]]
        assert sum(abs(x - 80) for x in late) / len(late) < 20, late


def test_grid_covers_every_point_once_then_ends() -> None:
    spec = experiment("grid", {"seed": "1"})
    suggester = make_suggester(spec)
    history: list[TrialRecord] = []
    seen = []
    while batch := suggester.suggest(history, 4):
        seen += batch
        history += [TrialRecord(f"t{len(history) + i}", a, 1.0, SUCCEEDED) for i, a in enumerate(batch)]
    keys = {tuple(sorted(a.items())) for a in seen}
    assert len(seen) == len(keys) == 3 * 3 * 2
    assert {a["lr"] for a in seen} == {"0.1", "0.2", "0.3"}
    assert {a["layers"] for a in seen} == {"2", "4", "6"}
    assert suggester.suggest(history, 4) == []


def test_hyperband_runs_katibs_bracket_schedule() -> None:
    """r_l=9, eta=3: brackets of 9x1 -> 3x3 -> 1x9, then 5x3 -> 1x9 (ceil(5/3)=2), then 3x9."""
    params = [
        {"name": "lr", "parameterType": "double", "feasibleSpace": {"min": "0.01", "max": "0.1"}},
        {"name": "epochs", "parameterType": "int", "feasibleSpace": {"min": "1", "max": "9"}},
    ]
    spec = experiment(
        "hyperband", {"r_l": "9", "eta": "3", "resource_name": "epochs"}, parameters=params, parallel=9
    )
    suggester = make_suggester(spec)
    history: list[TrialRecord] = []
    rungs = []
    while True:
        batch = suggester.suggest(history, 20)
        if not batch:
            break
        running = [TrialRecord(f"t{len(history) + i}", a, None, RUNNING) for i, a in enumerate(batch)]
        assert suggester.suggest(history + running, 20) == [], "a rung waits for the previous one"
        history += [
            TrialRecord(r.name, r.assignments, float(r.assignments["lr"]), SUCCEEDED) for r in running
        ]
        rungs.append(batch)
    assert [(len(b), {a["epochs"] for a in b}) for b in rungs] == [
        (9, {"1"}),
        (3, {"3"}),
        (1, {"9"}),
        (5, {"3"}),
        (2, {"9"}),
        (3, {"9"}),
    ]
    # Successive halving keeps the best (lowest lr) of the previous rung.
    assert {a["lr"] for a in rungs[1]} == set(sorted((a["lr"] for a in rungs[0]), key=float)[:3])
    for batch in rungs:
        for assignments in batch:
            assert 0.01 <= float(assignments["lr"]) <= 0.1


@pytest.mark.parametrize(
    ("algorithm", "settings", "parameters", "path"),
    [
        (
            "sobol",
            {},
            [
                {
                    "name": "x",
                    "parameterType": "double",
                    "feasibleSpace": {"min": "0", "max": "1", "distribution": "normal"},
                }
            ],
            "spec.parameters[0].feasibleSpace.distribution",
        ),
        ("cmaes", {"restart_strategy": "ipop"}, None, "spec.algorithm.algorithmSettings[0].value"),
        (
            "bayesianoptimization",
            {"n_initial_points": "0"},
            None,
            "spec.algorithm.algorithmSettings[0].value",
        ),
    ],
)
def test_settings_and_distributions_that_cannot_be_honoured_are_spec_errors(
    algorithm: str, settings: dict[str, str], parameters: list[dict[str, Any]] | None, path: str
) -> None:
    spec = experiment(algorithm, settings, parameters)
    with pytest.raises(SpecError) as info:
        make_suggester(spec)
    assert info.value.path == path
    assert "\n" not in str(info.value)


def test_hyperopt_supports_normal_distributions() -> None:
    params = [
        {
            "name": "x",
            "parameterType": "double",
            "feasibleSpace": {"min": "-3", "max": "3", "distribution": "normal"},
        }
    ]
    spec = experiment("random", {"random_state": "1"}, params)
    values = [float(a["x"]) for a in make_suggester(spec).suggest([], 200)]
    mean = sum(values) / len(values)
    assert abs(mean) < 0.3 and 0.6 < (sum(v * v for v in values) / len(values)) ** 0.5 < 1.4
