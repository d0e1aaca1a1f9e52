"""A small data-parallel training run, started on a lease by torchrun.

    aicontract acquire examples/contracts/ddp-training.yaml --torchrun -- examples/train_ddp.py

The lease decides the shape of the run: torchrun starts one process per granted
GPU (NCCL), or ``workload.procs_per_node`` processes on the granted CPUs (gloo)
when no GPU was granted, and they meet at the rendezvous port the lease granted
(``MASTER_ADDR``/``MASTER_PORT``). Each process trains the same small model on
its own shard of random data for a few steps; rank 0 reports the whole world's
throughput with :func:`aicontract.report`, so the lease's monitor sees it
against the contract's throughput objective.

It also runs without a lease or torchrun (``python examples/train_ddp.py``):
one process, on its own.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import aicontract


def setup() -> torch.device:
    """Join the world torchrun describes (or make a world of one) and pick a device."""
    use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend)
    else:  # not started by torchrun: a world of one, no rendezvous needed
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if use_cuda:
        # CUDA_VISIBLE_DEVICES holds exactly the lease's GPUs: local rank i takes the i-th.
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps (default 20)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples per process and step")
    parser.add_argument("--features", type=int, default=64, help="width of the model")
    args = parser.parse_args()

    device = setup()
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same initial model everywhere (DDP also broadcasts rank 0's)
    model = nn.Sequential(
        nn.Linear(args.features, args.features), nn.ReLU(), nn.Linear(args.features, 1)
    ).to(device)
    ddp = DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )
    optimiser = torch.optim.SGD(ddp.parameters(), lr=0.01)
    data = torch.Generator().manual_seed(1 + rank)  # each process its own shard
    loss = torch.zeros(())

    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        inputs = torch.randn(args.batch_size, args.features, generator=data).to(device)
        targets = inputs.sum(dim=1, keepdim=True)
        tick = time.perf_counter()
        optimiser.zero_grad()
        loss = nn.functional.mse_loss(ddp(inputs), targets)
        loss.backward()  # gradients are averaged across the world here
        optimiser.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if rank == 0:
            rate = args.batch_size * size / (time.perf_counter() - tick)
            aicontract.report(throughput=rate, unit="samples/s")
            print(
                f"step {step}/{args.steps}: loss {loss.item():.4f}, {rate:,.0f} samples/s",
                flush=True,  # seen as it happens, and not lost if the process dies
            )
    elapsed = time.perf_counter() - started

    # Data parallelism keeps every replica identical: check it, as a test would.
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum()
    lowest, highest = checksum.clone(), checksum.clone()
    dist.all_reduce(lowest, op=dist.ReduceOp.MIN)
    dist.all_reduce(highest, op=dist.ReduceOp.MAX)
    if rank == 0:
        total = args.steps * args.batch_size * size
        agree = "agree" if torch.equal(lowest, highest) else "DIFFER"
        print(
            f"trained {args.steps} steps on {size} process(es) ({dist.get_backend()},"
            f" {device.type}): {total / elapsed:,.0f} samples/s, final loss {loss.item():.4f};"
            f" replicas {agree}"
        )
    # Leave together: a process that tears its group down while a peer still talks to it
    # can abort gloo's threads ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
