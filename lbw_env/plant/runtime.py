"""Process-level knobs that decide small-model speed on a CPU: torch threads and glibc malloc.

Why: a 1 M-parameter model's step allocates and frees the same few-MB activation tensors hundreds of
times. glibc returns freed blocks above its mmap threshold straight to the kernel, so every step pays page
faults again; raising the mmap and trim thresholds keeps that memory in the heap (measured here: small-model
steps up to 40 % faster). Threads: two processes with two torch threads each on two cores thrash, so the
caller sets the count deliberately.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

import torch

from ..config import ConfigError

# mallopt parameter numbers from <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc caps the mmap threshold at HEAP_MAX / 2 (32 MiB on 64-bit); asking for more is refused.
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 256 * 1024 * 1024


@functools.cache
def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds once per process. Returns False where there is no glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok_mmap = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) == 1
    ok_trim = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD) == 1
    return ok_mmap and ok_trim


def configure(threads: int = 0, mallopt: bool = True) -> None:
    """Apply the runtime settings of a :class:`~lbw_env.config.RuntimeConfig` to this process."""
    if threads > 0 and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if mallopt:
        tune_malloc()


def check_device(device: str) -> None:
    """A one-line :class:`~lbw_env.config.ConfigError` naming ``model.device`` unless this torch can use it: a
    device it cannot would otherwise fail inside a run, after a suite's earlier runs and its output folder."""
    try:
        where = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"model.device: expected cpu, cuda, cuda:<index> or mps, got {device!r}") from None
    if where.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (where.index or 0) >= count:
            raise ConfigError(f"model.device: {device!r}, but this torch sees {count} CUDA device(s)")
    elif where.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"model.device: {device!r}, but this torch has no MPS device")
    elif where.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"model.device: expected cpu, cuda, cuda:<index> or mps, got {device!r}")
