"""One gloo process group across every replica, initialised from the operator's variables:
each rank contributes rank+1 and prints the sum everyone sees."""

import os

import torch
import torch.distributed as dist

dist.init_process_group("gloo", init_method="env://")
rank, world = dist.get_rank(), dist.get_world_size()
value = torch.tensor([float(rank + 1)])
dist.all_reduce(value, op=dist.ReduceOp.SUM)
print(f"rank={rank} world={world} env_rank={os.environ['RANK']} sum={int(value.item())}", flush=True)
dist.barrier()
dist.destroy_process_group()
