"""Data-parallel training across processes: PyTorch's DDP, launched by `torchrun`.

`train.devices` > 1 makes `python -m pipeline train` start itself again under
`torch.distributed.run --standalone --nproc_per_node=N` (so `dvc repro` and `dvc exp run -S
train.devices=2` need nothing else) and wait for it. A process that torchrun started (WORLD_SIZE
in its environment: that launch, or one the user ran, on one machine or several) joins the
process group: NCCL on CUDA, each rank on cuda:LOCAL_RANK; gloo on CPU, each process with its
share of the machine's cores.

Every process runs the same loop; `World` holds what differs: the rank, the device, and the
collectives, which are no-ops in a single process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from pipeline.system import available_cores
from pipeline.training.device import resolve_device

# torchrun's own settings, read from the environment when its flags are absent (PET_<FLAG>):
# with one of these set, the self-launch joins that rendezvous instead of a standalone one
MULTI_NODE_ENV = ("PET_NNODES", "PET_RDZV_ENDPOINT")


def launched() -> bool:
    """True inside a process that torchrun (or another launcher that sets WORLD_SIZE) started."""
    return "WORLD_SIZE" in os.environ


def should_launch(devices: int) -> bool:
    """True when this command must start itself under torchrun: not launched yet, and more than
    one process asked for here or a multi-node rendezvous set in the environment."""
    return not launched() and (devices > 1 or any(name in os.environ for name in MULTI_NODE_ENV))


@dataclass
class Launched:
    """How a torchrun launch ended: its exit code, and what its processes wrote to stderr, by local rank."""

    code: int
    stderr: dict[int, str]

    def first_error(self) -> tuple[int, str] | None:
        """(local rank, its one-line error) of the lowest rank that failed with a PipelineError."""
        for rank, text in sorted(self.stderr.items()):
            for line in text.splitlines():
                if line.startswith("error: "):
                    return rank, line.removeprefix("error: ")
        return None


def launch(devices: int, argv: list[str]) -> Launched:
    """Run `python -m pipeline <argv>` in `devices` processes under torch.distributed.run and
    wait. On one machine a standalone rendezvous on a free port; with PET_NNODES/
    PET_RDZV_ENDPOINT set, torchrun's multi-node settings from the environment. The processes'
    stdout streams through; their stderr is kept in log files (torchrun --redirects), so that a
    failure is reported once, not once per process and again in torchrun's own traceback."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={devices}", "--redirects=2"]
    if not any(name in os.environ for name in MULTI_NODE_ENV):
        command.append("--standalone")
    env = dict(os.environ)
    # torchrun would set 1 and warn; each process sets its own thread count from the cores anyway
    env.setdefault("OMP_NUM_THREADS", str(max(available_cores() // devices, 1)))
    with tempfile.TemporaryDirectory(prefix="textclf-torchrun-") as logs:
        try:
            code = subprocess.run([*command, f"--log-dir={logs}", "-m", "pipeline", *argv], env=env, stderr=subprocess.PIPE).returncode
        except KeyboardInterrupt:  # torchrun passes the signal to its workers and stops them
            code = 130
        stderr = {int(path.parent.name): path.read_text(encoding="utf-8", errors="replace") for path in Path(logs).glob("**/attempt_*/*/stderr.log")}
    return Launched(code, stderr)


@dataclass
class World:
    """This process's place in the run. A single process is rank 0 of a world of 1."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None  # None: not distributed

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def main(self) -> bool:
        """The rank-0 process: the only one that logs, saves and writes reports."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """Rank and sizes as the launcher set them (no process group needed)."""
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", 1)))

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Summed over every process, in place; returned for convenience."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def all_gather(self, value: Any) -> list[Any]:
        """Every process's `value` (any picklable object), in rank order."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object), on every process."""
        if not self.distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def join(device_name: str) -> tuple[World, torch.device]:
    """Join the process group when launched by torchrun and pick this process's device:
    cuda:LOCAL_RANK with NCCL when the device param allows CUDA and it is there, else the CPU
    with gloo. Without a launch: a world of 1 and `device_name` resolved."""
    if not launched():
        return World(), resolve_device(device_name)
    where = World.from_env()
    device = resolve_device(device_name, where.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return World(where.rank, where.size, where.local_rank, where.local_size, backend), device


def shard(batch: np.ndarray, world: World) -> np.ndarray:
    """This rank's share of one global batch: every size-th document from its rank on, so the
    shares differ by at most one document and mix short and long ones alike."""
    return batch[world.rank :: world.size]
