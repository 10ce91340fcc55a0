"""Which device a process computes on, at what precision, and how much memory it took."""

from __future__ import annotations

import contextlib
import resource

import torch

from pipeline.errors import PipelineError


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device for a device param (`auto`: CUDA when present, else CPU). With `local_rank`
    (a process of a distributed run): cuda:local_rank where CUDA is allowed, else the CPU.
    A device that is absent is a user error."""
    kind = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name).type
    if local_rank is not None:
        if kind == "cuda":
            if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
                raise PipelineError(
                    f"process {local_rank} on this machine has no GPU ({torch.cuda.device_count()} visible); "
                    "set train.devices (or torchrun's --nproc_per_node) to at most the GPU count, or train.device to cpu"
                )
            return torch.device("cuda", local_rank)
        if kind != "cpu":
            raise PipelineError(f"train.device {name!r} cannot train across processes; use auto, cuda or cpu")
        return torch.device("cpu")
    device = torch.device(kind if name == "auto" else name)
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise PipelineError(f"device {name!r} is not available on this machine; set the device param to auto or cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise PipelineError("device 'mps' is not available on this machine; set the device param to auto or cpu")
    return device


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`: bf16 autocast on CUDA, fp32 elsewhere."""
    precision = ("bf16" if device.type == "cuda" else "fp32") if name == "auto" else name
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PipelineError("this GPU does not support bf16; set train.precision to fp32")
    return precision


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
