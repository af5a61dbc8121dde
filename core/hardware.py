"""What this machine can run (imports torch: call it from workers and checks,
not on every page render)."""

from __future__ import annotations

import functools
from typing import Optional


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=1)
def qlora_unavailable() -> Optional[str]:
    """None when a 4-bit NF4 layer runs forward and backward here, else why not."""
    try:
        import bitsandbytes as bnb
        import torch
    except ImportError as exc:
        return f"bitsandbytes is not installed ({exc})"
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    try:
        dev = device()
        layer = bnb.nn.Linear4bit(64, 64, bias=False, quant_type="nf4", compute_dtype=torch.float32).to(dev)
        x = torch.randn(2, 64, device=dev, requires_grad=True)
        layer(x).sum().backward()
    except Exception as exc:  # any backend failure means: not here
        return f"bitsandbytes has no working 4-bit backend for {device()} ({type(exc).__name__}: {exc})"
    return None
