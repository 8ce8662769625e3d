"""A two-task pipeline with typed parameters, one component declaring an (installed) package."""

from kfp import dsl


@dsl.component(base_image="python:3.11", packages_to_install=["numpy"])
def add(a: int, b: float) -> float:
    import numpy as np

    return float(np.add(a, b))


@dsl.component(base_image="python:3.11")
def describe(total: float, flag: bool, tags: list, mlflow_run_id: str) -> str:
    import shutil
    import sys

    return "|".join(
        [str(total), str(flag), ",".join(tags), mlflow_run_id, sys.executable, shutil.which("python3")]
    )


@dsl.pipeline(name="basic")
def basic_pipeline(
    a: int,
    b: float = 0.5,
    flag: bool = False,
    tags: list = [],  # noqa: B006 (KFP reads the default from the signature)
    mlflow_run_id: str = "",
) -> str:
    total = add(a=a, b=b)
    return describe(total=total.output, flag=flag, tags=tags, mlflow_run_id=mlflow_run_id).output
