"""dlzoo: config-driven PyTorch runs of the classic deep-learning lessons."""

__version__ = "0.1.0"
