"""A pipeline whose only task runs until it is killed; it writes its pid to `marker` once started."""

from kfp import dsl


@dsl.component(base_image="python:3.11")
def wait_forever(marker: str):
    import os
    import time

    with open(marker + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(marker + ".tmp", marker)
    while True:
        time.sleep(0.1)


@dsl.pipeline(name="slow")
def slow_pipeline(marker: str):
    wait_forever(marker=marker)
