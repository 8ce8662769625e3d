"""A container component (no Python function: an image's command) feeding a Python component."""

from kfp import dsl


@dsl.container_component
def shout(text: str, out: dsl.OutputPath(str)):
    return dsl.ContainerSpec(
        image="alpine:3.20",
        command=["sh", "-c", 'printf "%s!" "$0" | tr a-z A-Z > "$1"'],
        args=[text, out],
    )


@dsl.component(base_image="python:3.11")
def count(text: str) -> int:
    return len(text)


@dsl.pipeline(name="container")
def container_pipeline(text: str = "hello") -> int:
    loud = shout(text=text)
    return count(text=loud.outputs["out"]).output


@dsl.container_component
def missing():
    return dsl.ContainerSpec(image="alpine:3.20", command=["no-such-program-here"], args=["x"])


@dsl.pipeline(name="missing-command")
def missing_pipeline():
    missing()
