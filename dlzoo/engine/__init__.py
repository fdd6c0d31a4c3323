"""The engine: one run assembled (run), its training loop (loop), checkpoints and run folders, stopping, tracking,
evaluation and inference, transfer, data-parallel training (distributed) and torch.compile (compiled)."""
