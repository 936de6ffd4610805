"""Per-thread reusable buffers for the large, same-shaped arrays classify allocates.

A fresh multi-megabyte array per chunk or batch makes malloc keep freed memory it
cannot hand out again: on a 32768^2 scene that grew peak memory by hundreds of MB.
Reusing one buffer per shape and thread keeps it flat and skips page-faulting new
memory. A buffer is only valid until the same thread asks for that shape again.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

_LOCAL = threading.local()
# Full-size chunks/batches, the smaller ones at a scene's edge or a chunk's end, a spare.
_SHAPES_PER_THREAD = 4


def thread_buffer(
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    layout: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """An uninitialised tensor this thread gets back on its next request of the same kind."""
    buffers: dict[tuple[Any, ...], torch.Tensor] = _LOCAL.__dict__.setdefault("buffers", {})
    key = (tuple(shape), dtype, torch.device(device), layout)
    if key not in buffers:
        if len(buffers) >= _SHAPES_PER_THREAD:
            buffers.clear()
        buffers[key] = torch.empty(shape, dtype=dtype, device=device, memory_format=layout)
    return buffers[key]
