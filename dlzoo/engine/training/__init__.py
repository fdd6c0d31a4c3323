"""The training loop and what it keeps: fit (loop), its options and resumable state (state), checkpoints with every
RNG stream, stopping, evaluation, per-layer probes, data-parallel training (distributed) and torch.compile."""
