"""A small Katib trial that reports like the upstream examples' trainers, for local collector tests.

`--logger text` writes `{metricName: accuracy, metricValue: 0.9}` lines to `--log-path` (the File
collector example's filter), `--logger json` one JSON object per epoch with string values (Katib's
JSON format), `--logger tfevents` TF2-style tensor summaries under `<log-path>/test` (what the
TensorFlowEvent example reads). Accuracy peaks at lr = 0.03; nothing is printed as metrics on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log-path", required=True)
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--momentum", type=float, default=0.5)
    parser.add_argument("--logger", choices=("text", "json", "tfevents"), required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    print(f"training with lr={args.lr} (stdout carries no metric here)", flush=True)
    records = []
    for epoch in range(1, args.epochs + 1):
        accuracy = 0.9 - abs(args.lr - 0.03) * 5 + 0.01 * epoch
        loss = 1.0 - accuracy
        records.append((epoch, accuracy, loss))
    if args.logger == "tfevents":
        from tensorboard.compat.proto import event_pb2
        from tensorboard.plugins.scalar import summary_v2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        writer = EventFileWriter(os.path.join(args.log_path, "test"))
        for epoch, accuracy, _ in records:
            summary = summary_v2.scalar_pb("accuracy", accuracy)
            writer.add_event(event_pb2.Event(wall_time=time.time(), step=epoch, summary=summary))
        writer.close()
        return
    os.makedirs(os.path.dirname(args.log_path), exist_ok=True)
    with open(args.log_path, "w", encoding="utf-8") as out:
        for epoch, accuracy, loss in records:
            if args.logger == "json":
                line = {"epoch": str(epoch), "accuracy": f"{accuracy:.4f}", "loss": f"{loss:.4f}", "timestamp": time.time()}
                out.write(json.dumps(line) + "\n")
            else:
                out.write(f"epoch {epoch}: {{metricName: accuracy, metricValue: {accuracy:.4f}}};"
                          f"{{metricName: loss, metricValue: {loss:.4f}}}\n")


if __name__ == "__main__":
    main()
