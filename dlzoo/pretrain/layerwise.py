"""Unsupervised pretraining of an MLP's hidden layers before supervised fine-tuning (lecture 10-2, Géron 11.2.2):
a deep belief net of greedily stacked RBMs (Hinton, Osindero & Teh 2006) or a greedy stack of autoencoders
(Bengio et al. 2007), chosen by name with `pretrain.method`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from dlzoo.data.build import DataConfig, build_splits
from dlzoo.data.splits import Splits, to_float
from dlzoo.pretrain.rbm import RBM, hidden_features, train_rbm
from dlzoo.registry import Registry


@dataclass
class PretrainConfig:
    method: str = "none"  # registry: dlzoo ls pretrain; conf/pretrain/<method>.yaml holds each method's defaults
    epochs: int = 5  # passes over the images, per hidden layer
    lr: float = 0.1  # rbm: SGD step on the mean CD gradient (Hinton's RBM guide §4); autoencoder: Adam's lr
    cd_k: int = 1  # rbm: Gibbs steps of CD-k (Hinton et al. 2006 used CD-1)
    batch_size: int = 100  # the guide's §5: 10 to 100
    momentum: float = 0.9  # rbm: 0.5 in the first epoch, then this (the guide's §9)
    weight_decay: float = 2e-4  # rbm: L2 on the weights only (the guide's §10: 1e-2 to 1e-5)
    unlabeled: bool = True  # pretrain on the whole train split, also images data.train_subset leaves unlabelled


LayerLog = Callable[[str, int, dict[str, float]], None]  # (layer tag such as "rbm1", epoch, metrics)


class PretrainLog(Protocol):
    """Where pretraining reports (the run's tracker; dlzoo.engine.recording.tracking.Tracker has these methods)."""

    def log_pretrain_start(self, method: str, images: int, layers: int) -> None: ...
    def log_pretrain(self, layer: str, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass
class PretrainArgs:
    epochs: int = 5
    lr: float = 0.1
    cd_k: int = 1
    batch_size: int = 100
    momentum: float = 0.9
    weight_decay: float = 2e-4
    seed: int = 0


class PretrainStopped(Exception):
    """A stop request (Ctrl-C, SIGTERM) arrived mid-layer; the layers finished before it were saved."""


@dataclass
class Session:
    """A pretraining's link to its run: the state a stopped run had saved (`done`, or None to start fresh),
    `save` called with the state after every finished layer, and `stop_requested` checked after every batch.
    A resumed pretraining redoes the interrupted layer from its start, so it ends exactly as an uninterrupted one."""

    done: dict[str, Any] | None = None
    save: Callable[[dict[str, Any]], None] = field(default=lambda state: None)
    stop_requested: Callable[[], bool] = field(default=lambda: False)


Pretrainer = Callable[[list[nn.Sequential], Tensor, float, float, PretrainArgs, LayerLog, Session], None]
PRETRAINERS: Registry[Pretrainer] = Registry("pretrain", "pretrain.method")


@PRETRAINERS.register("none", "no pretraining: model.init alone sets the starting weights")
def _none(
    blocks: list[nn.Sequential], images: Tensor, mean: float, std: float, a: PretrainArgs, log: LayerLog, s: Session
) -> None:
    return None


@PRETRAINERS.register("rbm", "deep belief net: RBM k learns from RBM k-1's hidden probabilities (Hinton et al. 2006)")
def pretrain_dbn(
    blocks: list[nn.Sequential],
    images: Tensor,
    mean: float,
    std: float,
    a: PretrainArgs,
    log: LayerLog,
    session: Session | None = None,
) -> list[RBM]:
    """Greedy layer-wise DBN: RBM 1 on the pixels in [0, 1], RBM k on p(h | v) of RBM k-1, one per hidden layer;
    each RBM's weights and hidden biases then become its Linear layer's (the first folded for `mean`/`std`).

    Args:
        blocks: the MLP's hidden blocks (fc1, fc2, ...), each with a `linear` layer.
        images: (N, C, H, W) uint8 training images on the device to train on.
        mean, std: the normalization the MLP's inputs get (data.normalize); (0, 1) when none.
        a: the pretraining hyperparameters.
        log: called after every layer-epoch.
        session: where finished layers are saved and a stop is noticed (Session; none by default).

    Returns:
        The trained RBMs, input side first.

    Raises:
        PretrainStopped: on a stop request, after the finished layers were saved.
    """
    session = session or Session()
    generator = torch.Generator(device=images.device).manual_seed(a.seed)
    rbms: list[RBM] = []
    if session.done is not None:
        rbms = [RBM(**{k: v.to(images.device) for k, v in saved.items()}) for saved in session.done["rbms"]]
        generator.set_state(session.done["generator"])
    features = images
    for rbm in rbms:  # the inputs of the first unfinished layer; p(h | v) draws nothing at random
        features = hidden_features(rbm, features)
    for i, block in enumerate(blocks[len(rbms) :], start=len(rbms) + 1):
        rbm = train_rbm(
            features,
            block.linear.out_features,
            a.epochs,
            a.lr,
            a.cd_k,
            a.batch_size,
            a.momentum,
            a.weight_decay,
            generator,
            on_epoch=lambda epoch, metrics, i=i: log(f"rbm{i}", epoch, metrics),
            stop_requested=session.stop_requested,
        )
        if rbm is None:
            raise PretrainStopped
        rbms.append(rbm)
        session.save({"rbms": [r.state_dict() for r in rbms], "generator": generator.get_state()})
        if i < len(blocks):
            features = hidden_features(rbm, features)
    load_dbn(blocks, rbms, mean, std)
    return rbms


def fold_normalization(weight: Tensor, bias: Tensor, mean: float, std: float) -> tuple[Tensor, Tensor]:
    """The weight and bias that give normalized inputs x' = (x - mean) / std the pre-activations W x + b the RBM
    learned on raw x in [0, 1]. Exact, since x = std x' + mean: W x + b = (std W) x' + (b + mean W 1)."""
    return weight * std, bias + mean * weight.sum(1)


@torch.no_grad()
def load_dbn(blocks: list[nn.Sequential], rbms: list[RBM], mean: float, std: float) -> None:
    """Copy each RBM's weights and hidden biases into its block's Linear layer; the output layer keeps its init."""
    for i, (block, rbm) in enumerate(zip(blocks, rbms, strict=True)):
        weight, bias = rbm.weight, rbm.hidden_bias
        if i == 0:
            weight, bias = fold_normalization(weight, bias, mean, std)
        block.linear.weight.copy_(weight)
        block.linear.bias.copy_(bias)


@PRETRAINERS.register("autoencoder", "greedy stacked autoencoder: each hidden layer learns to rebuild its input")
def pretrain_autoencoders(
    blocks: list[nn.Sequential],
    images: Tensor,
    mean: float,
    std: float,
    a: PretrainArgs,
    log: LayerLog,
    session: Session | None = None,
) -> None:
    """Greedy layer-wise autoencoders (Géron 11.2.2, Bengio et al. 2007): hidden block k (its own Linear and
    activation, trained in place) encodes the codes of block k-1 and a fresh untied Linear decodes them; the
    loss is the mean squared reconstruction error, minimized by Adam. The first block sees the inputs exactly as
    the MLP does (normalized with `mean`/`std`), so nothing needs folding.

    Args are as for pretrain_dbn; `a.lr` is Adam's learning rate, `a.momentum`/`a.weight_decay`/`a.cd_k` are unused.
    """
    session = session or Session()
    generator = torch.Generator(device=images.device).manual_seed(a.seed)
    finished = 0
    if session.done is not None:
        finished = len(session.done["blocks"])
        for block, saved in zip(blocks, session.done["blocks"], strict=False):
            block.load_state_dict(saved)
        generator.set_state(session.done["generator"])
    features = images
    for block in blocks[:finished]:
        features = _encode(block, features, mean, std)
    for i, block in enumerate(blocks[finished:], start=finished + 1):
        linear = block.linear
        decoder = nn.Linear(linear.out_features, linear.in_features).to(images.device)
        optimizer = torch.optim.Adam([*block.parameters(), *decoder.parameters()], lr=a.lr)
        block.train()
        for epoch in range(1, a.epochs + 1):
            order = torch.randperm(len(features), generator=generator, device=images.device)
            total = torch.zeros((), device=images.device)
            for start in range(0, len(features), a.batch_size):
                x = _model_inputs(features[order[start : start + a.batch_size]], mean, std)
                loss = F.mse_loss(decoder(block(x)), x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.detach() * len(x)
                if session.stop_requested():
                    raise PretrainStopped
            log(f"ae{i}", epoch, {"loss": total.item() / len(features)})
        session.save({"blocks": [b.state_dict() for b in blocks[:i]], "generator": generator.get_state()})
        if i < len(blocks):
            features = _encode(block, features, mean, std)


def _model_inputs(batch: Tensor, mean: float, std: float) -> Tensor:
    """Flat inputs as the MLP sees them: uint8 images scaled to [0, 1] and normalized; codes pass through."""
    batch = batch.flatten(1)
    return (to_float(batch) - mean) / std if batch.dtype == torch.uint8 else batch


@torch.no_grad()
def _encode(block: nn.Sequential, features: Tensor, mean: float, std: float, batch_size: int = 10000) -> Tensor:
    block.eval()  # dropout off: the next layer learns from the codes the net computes at test time
    codes = [block(_model_inputs(features[i : i + batch_size], mean, std)) for i in range(0, len(features), batch_size)]
    block.train()
    return torch.cat(codes)


def pretrain_model(
    p: PretrainConfig,
    data_cfg: DataConfig,
    model: nn.Module,
    data: Splits,
    tracker: PretrainLog,
    seed: int,
    session: Session | None = None,
) -> None:
    """Entry point: pretrain `model`'s hidden layers in place as `p` says (nothing for method=none), on the
    images of `data` (or of the whole train split `data_cfg` names); `session` saves each finished layer and stops
    on request (PretrainStopped).

    With pretrain.unlabeled and data.train_subset set, the pretraining uses every image of the train split (the
    labels of the rest are simply not used), never the validation or test images.
    """
    if p.method == "none":
        return
    images = data.x_train
    if p.unlabeled and data_cfg.train_subset is not None:
        # The subset is a prefix of the seeded, class-filtered train part, so this is a superset of the labelled images.
        everything = dataclasses.replace(data_cfg, train_subset=None)
        images = build_splits(everything, images.device).x_train
    args = PretrainArgs(p.epochs, p.lr, p.cd_k, p.batch_size, p.momentum, p.weight_decay, seed)
    blocks = [block for name, block in model.layers.named_children() if name.startswith("fc")]
    tracker.log_pretrain_start(p.method, len(images), len(blocks))
    PRETRAINERS.get(p.method)(blocks, images, data.mean, data.std, args, tracker.log_pretrain, session or Session())


def problems(cfg: DictConfig) -> list[str]:
    """What config.validate refuses about cfg.pretrain (its method name is checked through the registry)."""
    p, m, out = cfg.pretrain, cfg.model, []

    def check(key: str, ok: bool, rule: str) -> None:
        if not ok:
            out.append(f"pretrain.{key}={p[key]!r} is out of range: it must be {rule}.")

    check("epochs", p.epochs >= 1, ">= 1")
    check("lr", p.lr > 0, "> 0")
    check("cd_k", p.cd_k >= 1, ">= 1 (Gibbs steps of CD-k; 1 is Hinton's CD-1)")
    check("batch_size", p.batch_size >= 1, ">= 1")
    check("momentum", 0 <= p.momentum < 1, "in [0, 1)")
    check("weight_decay", p.weight_decay >= 0, ">= 0")
    if p.method != "none":
        why = f"pretrain={p.method} initializes the hidden Linear layers of an MLP"
        if m.arch != "mlp" or not m.hidden:
            out.append(
                f"{why}, but model.arch={m.arch} with model.hidden={list(m.hidden)} has none. Fix: use "
                "an MLP with hidden layers (e.g. model=mlp_deep) or pretrain=none."
            )
        elif m.norm != "none":
            out.append(
                f"{why}; with model.norm={m.norm} the layers have no bias and a norm rescales their "
                "output, so the pretrained units are not the ones the net computes. Fix: model.norm=none."
            )
        elif m.activation == "maxout":
            out.append(
                f"{why}; maxout's Linear layers are act_args.maxout_k times wider than the units. Fix: "
                "another model.activation (sigmoid is the DBN's own unit, relu the lecture's)."
            )
    return out


def doubts(cfg: DictConfig) -> list[str]:
    """Legal but doubtful pretraining settings, for config.warnings."""
    p, m = cfg.pretrain, cfg.model
    if p.method == "rbm" and m.activation != "sigmoid":
        return [
            f"pretrain=rbm learns sigmoid units; in a model.activation={m.activation} net the copied units compute "
            f"{m.activation}(z) where the RBM computed sigmoid(z), and the mismatch grows with depth (measured in "
            "the README's pretraining section). model.activation=sigmoid is the DBN's own setting."
        ]
    return []
