"""A pipeline whose second task raises: the run's message must carry the real exception."""

from kfp import dsl


@dsl.component(base_image="python:3.11")
def prepare() -> float:
    return -1.0


@dsl.component(base_image="python:3.11")
def train(learning_rate: float) -> float:
    if learning_rate <= 0:
        raise ValueError("learning_rate must be positive")
    return learning_rate


@dsl.pipeline(name="failing")
def failing_pipeline():
    train(learning_rate=prepare().output)
