"""How weights move: optimizers, learning-rate schedules and regularization (penalties, clipping, max-norm)."""

from dlzoo.optim.optimizers import OPTIMIZERS, build_optimizer
from dlzoo.optim.schedules import SCHEDULES, Scheduler, build_scheduler

__all__ = ["OPTIMIZERS", "SCHEDULES", "Scheduler", "build_optimizer", "build_scheduler"]
