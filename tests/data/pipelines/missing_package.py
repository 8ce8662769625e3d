"""A pipeline whose component needs a package that is not installed (local runs never pip-install)."""

from kfp import dsl


@dsl.component(base_image="python:3.11", packages_to_install=["kubeflow-tasks-no-such-package>=1"])
def fit() -> int:
    return 1


@dsl.pipeline(name="missing-package")
def missing_package_pipeline():
    fit()
