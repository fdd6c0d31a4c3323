"""`trainer.compile`: the training forward through torch.compile, with eager PyTorch as the fallback when
compilation is unavailable (no C++ compiler or Triton, an unsupported platform or op)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dlzoo.engine.training.checkpoint import rng_state, set_rng_state

Forward = Callable[[Tensor], Tensor]


def compile_forward(
    forward: nn.Module, mode: str, probe: Callable[[Forward], Tensor], warn: Callable[[str], None]
) -> Forward:
    """`torch.compile(forward, mode=mode)`, tried on one training step's forward and backward: `probe(fn)`
    returns the loss of a real batch through `fn`, under the step's autocast. Compilation happens lazily at the
    first call, so this is where a missing compiler shows up, and the step's graphs are then ready. On failure
    `warn` gets the reason and the eager `forward` comes back. The probe leaves no trace: gradients are cleared,
    buffers (batch norm's running statistics) and every global RNG stream (dropout masks) are restored.
    """
    try:
        compiled = torch.compile(forward, mode=mode)
    except Exception as e:  # torch.compile itself refuses (e.g. a Python version it does not support yet)
        warn(_fallback_message(e))
        return forward
    params = list(forward.parameters())
    random_state = rng_state()
    buffers = [(b, b.detach().clone()) for b in forward.buffers()]
    try:
        probe(compiled).backward()
    except Exception as e:  # inductor's and Triton's failures come in many types; any of them means "not here"
        warn(_fallback_message(e))
        return forward
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for p in params:
            p.grad = None
        set_rng_state(random_state)
    return compiled


def _fallback_message(error: Exception) -> str:
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    return (
        f"trainer.compile=true: torch.compile is not available here ({type(error).__name__}: {reason}); "
        "training continues in eager PyTorch (the same model, uncompiled). Fix: install a C++ compiler (CPU) or "
        "Triton (GPU), or set trainer.compile=false to skip the attempt."
    )
