"""Transfer learning (Géron ch. 11.2): copy the first layers of a trained model into a new one, keep them frozen
for a few epochs while the new layers catch up, then train everything at a lower learning rate."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from torch import Tensor, nn

from dlzoo.config.schema import TransferConfig
from dlzoo.console import console
from dlzoo.engine.assembly.folders import checkpoint_file, load_checkpoint
from dlzoo.errors import DlzooError
from dlzoo.optim import Scheduler

EpochHook = Callable[[int, dict[str, float]], None]


def weight_layers(model: nn.Module) -> list[str]:
    """The modules that hold weights themselves (a linear layer, a norm layer), in the order they were built;
    the unit that transfer.reuse_layers counts, the last one being the output layer."""
    return [
        name
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False))
    ]


def copy_layers(model: nn.Module, source: dict[str, Tensor], layers: list[str], origin: str) -> None:
    """Copy the weights (and buffers) of `layers` from the state dict `source` into `model`.

    Raises:
        DlzooError: naming every layer the source lacks or holds in another shape, with both shapes.
    """
    target = model.state_dict()
    keys = [k for k in target if any(k.startswith(layer + ".") for layer in layers)]
    missing = [k for k in keys if k not in source]
    mismatched = [f"{k}: checkpoint {tuple(source[k].shape)} vs model {tuple(target[k].shape)}"
                  for k in keys if k in source and source[k].shape != target[k].shape]  # fmt: skip
    if missing or mismatched:
        what = ([f"missing in the checkpoint: {', '.join(missing)}"] if missing else []) + mismatched
        raise DlzooError(
            f"transfer.ckpt={origin} does not fit the layers to reuse ({', '.join(layers)}): {'; '.join(what)}. "
            "Fix: build the model with the same layers as the checkpoint's model (its .hydra/config.yaml or "
            "`config` entry), or copy fewer layers with transfer.reuse_layers=N."
        )
    model.load_state_dict({k: source[k] for k in keys}, strict=False)


def set_trainable(model: nn.Module, layers: list[str], trainable: bool) -> None:
    """Freeze or unfreeze `layers`: a frozen parameter gets no gradient, so every optimizer leaves it unchanged."""
    modules = dict(model.named_modules())
    for layer in layers:
        for p in modules[layer].parameters(recurse=False):
            p.requires_grad_(trainable)


def build_reuse(cfg: TransferConfig, model: nn.Module, fresh: bool) -> list[str]:
    """Copy transfer.reuse_layers leading layers from transfer.ckpt into `model` (only when `fresh`: a resumed run
    gets every weight from its own checkpoint). Returns the reused layer names; [] when transfer.ckpt is null."""
    if cfg.ckpt is None:
        return []
    layers = weight_layers(model)
    count = len(layers) - 1 if cfg.reuse_layers is None else cfg.reuse_layers
    if count > len(layers) or count < 1:
        raise DlzooError(
            f"transfer.reuse_layers={count}, but this model has {len(layers)} weight layers ({', '.join(layers)}). "
            f"Fix: a number from 1 to {len(layers)}, or null for all but the output layer."
        )
    reused = layers[:count]
    if fresh:
        path = checkpoint_file(Path(cfg.ckpt).expanduser())
        copy_layers(model, load_checkpoint(path)["model"], reused, str(path))
        console.print(f"transfer: copied {', '.join(reused)} from {path}")
    return reused


def build_freeze_schedule(
    cfg: TransferConfig,
    model: nn.Module,
    reused: list[str],
    scheduler: Scheduler,
    epochs_done: int,
    then: EpochHook | None = None,
) -> EpochHook | None:
    """Freeze `reused` for the first transfer.freeze_epochs epochs; the returned on_epoch_end hook unfreezes them
    after that epoch and switches to transfer.unfreeze_lr (Keras' recompile). Call it after building the optimizer,
    which must hold every parameter, frozen ones included. A run resumed at `epochs_done` >= freeze_epochs starts
    unfrozen at unfreeze_lr. `then` runs after the hook (the caller's own on_epoch_end)."""
    if not reused or cfg.freeze_epochs == 0:
        return then

    def unfreeze() -> None:
        set_trainable(model, reused, True)
        if cfg.unfreeze_lr is not None:
            scheduler.set_base_lr(cfg.unfreeze_lr)

    if epochs_done >= cfg.freeze_epochs:
        unfreeze()
        return then
    set_trainable(model, reused, False)

    def hook(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == cfg.freeze_epochs:
            unfreeze()
            console.print(f"transfer: unfroze the reused layers after epoch {epoch}; lr {scheduler.get_last_lr()[0]:g}")
        if then is not None:
            then(epoch, metrics)

    return hook
