"""Device choice, mixed precision and seeding for training.

``auto`` picks CUDA, then Apple MPS, then the CPU. Mixed precision (bf16 autocast) and the
channels-last-3d memory layout are used on CUDA only: on the CPU they are slower, and the CPU is
where runs must be bit-for-bit repeatable.
"""

from __future__ import annotations

import contextlib
import random

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """The torch device for a config value; asking for an absent accelerator is an error.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {DEVICE_CHOICES}, got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but torch sees no CUDA device")
    if name == "mps" and not _mps_available():
        raise RuntimeError("train.device is 'mps' but torch sees no MPS device")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last_3d on CUDA (faster 3D convolutions with cuDNN), contiguous elsewhere."""
    return torch.channels_last_3d if device.type == "cuda" else torch.contiguous_format


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy, torch and MONAI so a CPU run repeats exactly."""
    from monai.utils import set_determinism

    random.seed(seed)
    torch.manual_seed(seed)
    set_determinism(seed=seed % 2**32)  # also seeds NumPy's global generator


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
