"""Pretraining as a resumable phase of a run: checkpoints/pretrain.pt holds the layers finished so far (and every
RNG stream), a stop request ends it within one batch, and a resumed run redoes only the interrupted layer."""

from __future__ import annotations

from typing import Any

from torch import nn

from dlzoo.config.schema import TrainConfig
from dlzoo.data.splits import Splits
from dlzoo.engine.assembly.folders import PRETRAIN_FILE
from dlzoo.engine.training.checkpoint import Checkpointing, rng_state, save_checkpoint, set_rng_state
from dlzoo.engine.training.stopping import Interrupted, StopFlag
from dlzoo.pretrain.layerwise import PretrainLog, PretrainStopped, Session, pretrain_model


def is_pretraining(checkpoint: dict[str, Any]) -> bool:
    """A checkpoint written during pretraining (fine-tuning has not started)."""
    return "pretrain" in checkpoint


def pretrain(
    cfg: TrainConfig,
    model: nn.Module,
    data: Splits,
    tracker: PretrainLog,
    seed: int,
    checkpointing: Checkpointing | None,
    stop: StopFlag | None,
    saved: dict[str, Any] | None = None,
) -> None:
    """Pretrain `model` in place as cfg.pretrain says, continuing from `saved` (a pretrain.pt) when given.

    Raises Interrupted (pointing at pretrain.pt) when a stop request arrives."""
    if cfg.pretrain.method == "none":
        return
    path = checkpointing.folder / PRETRAIN_FILE if checkpointing is not None else None

    def save(state: dict[str, Any] | None) -> None:
        if checkpointing is not None and path is not None:
            payload = {"pretrain": state, "model": model.state_dict(), "rng": rng_state()}
            save_checkpoint(path, payload | checkpointing.extra)

    if saved is not None:
        set_rng_state(saved["rng"])
    else:
        save(None)  # a stop in the first layer can be resumed too
    session = Session(
        done=saved["pretrain"] if saved is not None else None,
        save=save,
        stop_requested=lambda: stop is not None and stop.signum is not None,
    )
    try:
        pretrain_model(cfg.pretrain, cfg.data, model, data, tracker, seed, session)
    except PretrainStopped:
        assert stop is not None and stop.signum is not None
        raise Interrupted(path if path is not None and path.is_file() else None, stop.signum) from None
    if path is not None:
        path.unlink(missing_ok=True)  # fine-tuning's last.pt takes over
