"""Distributed training of the commodity price model: one process per PyTorchJob replica.

Runs unchanged on a cluster and on the local backend: the process group is initialised from the
variables the training operator injects (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK) with the gloo
backend on CPU. Started without them (plain `python train_ddp.py ...`), it trains as a world of one.

Model: the next day's change from the last 7 prices, each taken relative to the last known price,
and the day's driver (the CSV's `driver` column, zero when absent), all scaled (so a trending
series needs no extrapolation, as in trial.py), a small MLP trained with
DistributedDataParallel, each rank on its shard of the training windows (DistributedSampler); the
last 20% of the windows are held out. `--num-estimators` is the number of epochs: the pipeline and
the Katib experiment share one parameter name across models, and for this network "how many
rounds of fitting" is the epoch count.

Output (rank 0): `epoch=<n> loss=<v>` per epoch and `val_rmse=<v>` at the end (Katib's name=value
metrics format). With MLFLOW_TRACKING_URI and MLFLOW_RUN_ID set, rank 0 logs params and metrics to
that run, and logs the model (TorchScript,
MLflow's pytorch flavor, name `model`): a `Forecaster` that maps rows of the 7 last prices and the
driver to the next price, so evaluating it needs nothing from this file. With --output-dir, rank 0
saves the model's state_dict there as model.pt.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

WINDOW = 7
VALIDATION_FRACTION = 0.2
BATCH_SIZE = 32


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CSV with header day,price")
    parser.add_argument("--learning-rate", type=float, default=0.01)
    parser.add_argument("--num-estimators", type=int, default=20, help="number of epochs")
    parser.add_argument("--output-dir", help="where rank 0 saves model.pt")
    return parser.parse_args()


def init_distributed() -> tuple[int, int]:
    """Join the job's process group; alone, become a world of one on a free local port."""
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="1", RANK="0")
    dist.init_process_group("gloo", init_method="env://")
    return dist.get_rank(), dist.get_world_size()


def load_rows(path: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, next prices): each row the 7 prices of a window and the driver of its last day."""
    with open(path, newline="") as handle:
        records = list(csv.DictReader(handle))
    if len(records) <= WINDOW + 1:
        raise SystemExit(f"{path}: need more than {WINDOW + 1} prices, got {len(records)}")
    series = torch.tensor([float(r["price"]) for r in records], dtype=torch.float32)
    driver = torch.tensor([float(r.get("driver") or 0.0) for r in records], dtype=torch.float32)
    windows = series.unfold(0, WINDOW, 1)[:-1]
    rows = torch.cat([windows, driver[WINDOW - 1 : -1].unsqueeze(1)], dim=1)
    return rows, series[WINDOW:].unsqueeze(1)


class Forecaster(nn.Module):
    """Raw rows (7 prices, driver) in, next price out: the scaling lives inside the model.

    The network sees the prices minus the last one and the driver, divided by `scale` (the spread
    of daily changes in the training data); it predicts the scaled change.
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale
        self.window = WINDOW  # an attribute: TorchScript cannot read module globals
        self.net = nn.Sequential(nn.Linear(WINDOW + 1, 32), nn.ReLU(), nn.Linear(32, 1))

    def features(self, rows: torch.Tensor) -> torch.Tensor:
        last = rows[:, self.window - 1 : self.window]
        return torch.cat([rows[:, : self.window] - last, rows[:, self.window :]], dim=1) / self.scale

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[:, self.window - 1 : self.window] + self.net(self.features(rows)) * self.scale


def main() -> None:
    args = parse_args()
    rank, world = init_distributed()
    torch.manual_seed(0)

    rows, targets = load_rows(args.data)
    split = int(len(rows) * (1 - VALIDATION_FRACTION))
    changes = targets[:split] - rows[:split, WINDOW - 1 : WINDOW]
    forecaster = Forecaster(changes.std().item() or 1.0)
    features = forecaster.features(rows)
    train = TensorDataset(features[:split], changes / forecaster.scale)
    sampler = DistributedSampler(train, num_replicas=world, rank=rank, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=BATCH_SIZE, sampler=sampler)

    model = DistributedDataParallel(forecaster.net)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
    # The learning rate decays to zero over the epochs, so the large rates tuned for the boosted trees
    # (up to 0.3) settle into a minimum instead of ending wherever the last steps threw them.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.num_estimators)
    loss_fn = nn.MSELoss()
    tracker = MlflowLog() if rank == 0 else None
    if tracker:
        tracker.params(
            {"learning_rate": args.learning_rate, "num_estimators": args.num_estimators, "world_size": world}
        )

    for epoch in range(1, args.num_estimators + 1):
        sampler.set_epoch(epoch)
        total = torch.zeros(2)  # summed loss, sample count on this rank
        for x, y in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            total += torch.tensor([loss.item() * len(x), len(x)])
        schedule.step()
        dist.all_reduce(total)
        epoch_loss = (total[0] / total[1]).item()
        if rank == 0:
            print(f"epoch={epoch} loss={epoch_loss:.6f}", flush=True)
            if tracker:
                tracker.metric("train_loss", epoch_loss, epoch)

    if rank == 0:
        forecaster.eval()
        with torch.no_grad():
            predicted = forecaster(rows[split:])
            val_rmse = math.sqrt(torch.mean((predicted - targets[split:]) ** 2).item())
        print(f"val_rmse={val_rmse:.6f}", flush=True)
        if tracker:
            tracker.metric("val_rmse", val_rmse, args.num_estimators)
            tracker.model(forecaster)
        if args.output_dir:
            out = Path(args.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            torch.save(forecaster.state_dict(), out / "model.pt")
    dist.barrier()
    dist.destroy_process_group()


class MlflowLog:
    """Logs into the run named by MLFLOW_RUN_ID, if MLflow is configured; never ends the run."""

    def __init__(self) -> None:
        self.run_id = os.environ.get("MLFLOW_RUN_ID")
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        self.client = None
        if self.run_id and uri:
            from mlflow.tracking import MlflowClient

            self.client = MlflowClient(tracking_uri=uri)

    def __bool__(self) -> bool:
        return self.client is not None

    def params(self, values: dict[str, object]) -> None:
        for key, value in values.items():
            self.client.log_param(self.run_id, key, value)

    def metric(self, key: str, value: float, step: int) -> None:
        self.client.log_metric(self.run_id, key, value, step=step)

    def model(self, forecaster: nn.Module) -> None:
        """Log the model to the run as `model` (TorchScript, so loading it needs no code of ours).

        The fluent call needs the run active in this process, and `start_run` ends it (FINISHED)
        when the block exits: it is set back to RUNNING, since the task that handed the run over
        ends it with the real outcome (a failure after this point must not read FINISHED).
        """
        import mlflow

        mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
        scripted = torch.jit.script(forecaster)
        with mlflow.start_run(run_id=self.run_id, log_system_metrics=False):
            mlflow.pytorch.log_model(
                scripted, name="model", pip_requirements=["torch"], serialization_format="pickle"
            )
        self.client.update_run(self.run_id, status="RUNNING")


if __name__ == "__main__":
    main()
