"""K networks of one architecture as one batched network (`trainer.stack=K`): every parameter stacked along a new
leading dimension of size K, so one optimizer step over the stacked tensors is K element-wise optimizer steps.

Two layouts carry the K members' activations without copying them apart:
- flat, (K, B, F): a Linear layer is one batched matmul (baddbmm) over the members;
- image, (B, K*C, H, W): member k owns channels k*C..(k+1)*C, so a convolution is one grouped convolution
  (groups=K), batch norm is one batch norm over K*C channels (per-channel statistics are per-member statistics),
  and pooling and element-wise activations run on it as they are.
Dropout draws member k's mask from member k's own generator, with the shape its standalone layer draws."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlzoo.models.activations import Maxout, activation_spec
from dlzoo.models.mlp import MLP
from dlzoo.models.norm_dropout import _SELU_SATURATION, AlphaDropout, Dropout

# Parameter-free modules that act element by element (or per channel, for the pools) and draw no random numbers.
_ELEMENTWISE = (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.LeakyReLU, nn.ELU, nn.SELU, nn.GELU, nn.SiLU, nn.Softplus,
                nn.Identity)  # fmt: skip
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def to_image(x: Tensor) -> Tensor:
    """(K, B, C, H, W) member inputs -> (B, K*C, H, W); image-layout tensors pass through."""
    return x.transpose(0, 1).flatten(1, 2) if x.dim() == 5 else x


def to_flat(x: Tensor, k: int) -> Tensor:
    """Any layout -> (K, B, F), each member's features in its standalone Flatten's order (C, H, W)."""
    if x.dim() == 4:  # image layout
        return x.unflatten(1, (k, -1)).flatten(2).transpose(0, 1)
    return x.flatten(2)


class _Op(ABC):
    """One layer of the stacked net: its stacked parameters (leading dim K) and the members' own."""

    def __init__(self) -> None:
        self.params: list[Tensor] = []
        # Weight matrices and kernels (what reg.l1/l2/max_norm act on), each with the dims that hold one unit's
        # incoming weights (the standalone regularizer's `flatten(1)` of one member's tensor).
        self.weights: list[tuple[Tensor, tuple[int, ...]]] = []
        # (stacked, the members' parameters, stored transposed): what write_back and write_grads copy.
        self.pairs: list[tuple[Tensor, list[Tensor], bool]] = []

    @abstractmethod
    def __call__(self, x: Tensor) -> Tensor: ...

    def own(self, stacked: Tensor | None, members: list[Tensor | None], transposed: bool = False) -> None:
        if stacked is not None:
            self.params.append(stacked)
            self.pairs.append((stacked, members, transposed))  # type: ignore[arg-type]

    def write_back(self, k: int) -> None:
        """Copy member k's slice into its module."""
        for stacked, members, transposed in self.pairs:
            members[k].copy_(stacked[k].t() if transposed else stacked[k])

    def write_grads(self, k: int) -> None:
        """Member k's gradients as its module's .grad (for the per-layer probes)."""
        for stacked, members, transposed in self.pairs:
            g = stacked.grad
            members[k].grad = None if g is None else (g[k].t() if transposed else g[k]).clone()


def _stack(tensors: list[Tensor], grad: bool = True) -> Tensor:
    return torch.stack([t.detach() for t in tensors]).contiguous().requires_grad_(grad)


class _Linear(_Op):
    def __init__(self, layers: list[nn.Linear]) -> None:
        super().__init__()
        self.layers = layers
        # (K, in, out): the batched matmul then reads both operands contiguously, forward and backward.
        self.w = _stack([lin.weight.t() for lin in layers])
        self.b = _stack([lin.bias for lin in layers]) if layers[0].bias is not None else None
        self.own(self.w, [lin.weight for lin in layers], transposed=True)
        self.own(self.b, [lin.bias for lin in layers])
        self.weights = [(self.w, (1,))]  # a unit's incoming weights: one column of (in, out)

    def __call__(self, x: Tensor) -> Tensor:
        x = to_flat(x, len(self.layers)) if x.dim() != 3 else x
        return torch.bmm(x, self.w) if self.b is None else torch.baddbmm(self.b.unsqueeze(1), x, self.w)


class _Conv(_Op):
    def __init__(self, convs: list[nn.Conv2d], nhwc: bool) -> None:
        super().__init__()
        c = self.conv = convs[0]
        self.convs, self.nhwc = convs, nhwc
        self.w = _stack([m.weight for m in convs])  # (K, out, in / groups, kh, kw)
        self.b = _stack([m.bias for m in convs]) if c.bias is not None else None
        self.own(self.w, [m.weight for m in convs])
        self.own(self.b, [m.bias for m in convs])
        self.weights = [(self.w, (2, 3, 4))]

    def __call__(self, x: Tensor) -> Tensor:
        c, k = self.conv, len(self.convs)
        b = self.b.flatten() if self.b is not None else None
        x, w = to_image(x), self.w.flatten(0, 1)
        if self.nhwc:  # oneDNN's grouped convolution is far faster on NHWC, as the members' own convolutions are
            x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, w, b, c.stride, c.padding, c.dilation, c.groups * k)


class _BatchNorm(_Op):
    """Training-mode batch norm over the members' K*C channels; running statistics per member channel."""

    def __init__(self, norms: list[nn.modules.batchnorm._BatchNorm]) -> None:
        super().__init__()
        self.norms, n = norms, norms[0]
        self.momentum, self.eps = n.momentum, n.eps
        self.w = _stack([m.weight for m in norms]) if n.affine else None
        self.b = _stack([m.bias for m in norms]) if n.affine else None
        self.own(self.w, [m.weight for m in norms])
        self.own(self.b, [m.bias for m in norms])
        self.running_mean = torch.cat([m.running_mean for m in norms]).clone()
        self.running_var = torch.cat([m.running_var for m in norms]).clone()
        self.batches = int(n.num_batches_tracked)

    def __call__(self, x: Tensor) -> Tensor:
        self.batches += 1
        w = self.w.flatten() if self.w is not None else None
        b = self.b.flatten() if self.b is not None else None
        flat = x.dim() == 3
        if flat:  # (K, B, F) -> (B, K*F): the members' features as channels
            k = x.shape[0]
            x = x.transpose(0, 1).flatten(1)
        y = F.batch_norm(to_image(x), self.running_mean, self.running_var, w, b, True, self.momentum, self.eps)
        return y.unflatten(1, (k, -1)).transpose(0, 1) if flat else y

    def write_back(self, k: int) -> None:
        super().write_back(k)
        n, c = self.norms[k], self.norms[k].num_features
        n.running_mean.copy_(self.running_mean[k * c : (k + 1) * c])
        n.running_var.copy_(self.running_var[k * c : (k + 1) * c])
        n.num_batches_tracked.fill_(self.batches)


class _Dropout(_Op):
    """Member k's mask from member k's generator, drawn as its standalone Dropout draws it on the CPU (on CUDA that
    layer uses torch's fused kernel, so there the masks are independent of the standalone run's, not equal)."""

    def __init__(
        self, module: nn.Module, generators: list[torch.Generator], training: Callable[[], bool], nhwc: bool
    ) -> None:
        super().__init__()
        self.p, self.alpha = module.p, isinstance(module, nn.AlphaDropout)
        self.generators, self.training, self.nhwc = generators, training, nhwc

    def __call__(self, x: Tensor) -> Tensor:
        if not self.training() or self.p == 0:
            return x
        image = x.dim() == 4
        k = len(self.generators)
        if image:
            # A channels_last member's activations are NHWC, and its rand_like fills them in that memory order.
            b, c, h, w = x.shape[0], x.shape[1] // k, x.shape[2], x.shape[3]
            shape = (b, h, w, c) if self.nhwc else (b, c, h, w)
            draws = [torch.rand(shape, generator=g, device=x.device) for g in self.generators]
            if self.nhwc:  # (B, H, W, K, C) in memory, seen as (B, K*C, H, W): channels_last, like x
                keep = torch.stack(draws, dim=3).flatten(3, 4).permute(0, 3, 1, 2)
            else:
                keep = torch.stack(draws, dim=1).flatten(1, 2)
        else:
            keep = torch.stack([torch.rand(x.shape[1:], generator=g, device=x.device) for g in self.generators])
        keep = keep >= self.p
        if not self.alpha:
            return x * keep * (1.0 / (1.0 - self.p))
        a = ((1 - self.p) * (1 + self.p * _SELU_SATURATION**2)) ** -0.5
        return torch.where(keep, x, _SELU_SATURATION) * a - a * _SELU_SATURATION * self.p


class _Stateless(_Op):
    def __init__(self, modules: list[nn.Module]) -> None:
        super().__init__()
        self.module, self.modules = modules[0], modules

    def probe(self, x: Tensor) -> None:
        """Run each member's own activation module on its slice of the input `x`, so that the hooks of
        dlzoo.engine.probes.activation_stats on that member record its statistics (the output is dropped)."""
        if activation_spec(self.module) is None:
            return
        k_all = len(self.modules)
        with torch.no_grad():
            for k, module in enumerate(self.modules):
                if x.dim() == 4:  # image layout: member k's channels
                    c = x.shape[1] // k_all
                    module(x[:, k * c : (k + 1) * c])
                else:
                    module(x[k])

    def __call__(self, x: Tensor) -> Tensor:
        if isinstance(self.module, _POOLS):
            return self.module.forward(to_image(x))
        if isinstance(self.module, Maxout):  # over the last (feature) dim, not dim 1
            return x.unflatten(-1, (x.shape[-1] // self.module.k, self.module.k)).amax(-1)
        return self.module.forward(x)  # not __call__: member 0's probe hooks must see member 0's slice only


class _Flatten(_Op):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def __call__(self, x: Tensor) -> Tensor:
        return to_flat(x, self.k)


def _chain(model: nn.Module) -> list[nn.Module]:
    """The model's layers in forward order, when its forward is a plain chain of them (Sequential containers,
    or the MLP whose forward is its Sequential); else ValueError naming what breaks the chain."""
    if isinstance(model, MLP):
        return _chain(model.layers)
    if isinstance(model, nn.Sequential):
        return [leaf for child in model for leaf in _chain(child)]
    if list(model.children()):
        raise ValueError(f"a {type(model).__name__} block (not a plain chain of layers)")
    return [model]


def why_not(model: nn.Module) -> str | None:
    """None when `model` can be stacked, else what stops it (for config validation)."""
    try:
        for module in _chain(model):
            _kind(module)
    except ValueError as e:
        return str(e)
    return None


def _kind(module: nn.Module) -> str:
    if type(module) in (nn.Linear, nn.Conv2d):
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"a conv with padding_mode={module.padding_mode}")
        return "linear" if type(module) is nn.Linear else "conv"
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not module.track_running_stats or module.momentum is None:
            raise ValueError("batch norm without running statistics or with a cumulative average")
        return "norm"
    if type(module) in (Dropout, AlphaDropout):
        return "dropout"
    if isinstance(module, nn.Flatten):
        return "flatten"
    if type(module) in _ELEMENTWISE or isinstance(module, (*_POOLS, Maxout)):
        return "stateless"
    raise ValueError(f"{type(module).__name__} layers")


class StackedNet:
    """K models of one architecture (the `members`, each built and initialized as its standalone run builds it)
    as one batched model; `generators[k]` is member k's random stream (its dropout masks); `nhwc`: the members
    run channels_last, so their dropout masks fill NHWC memory order."""

    def __init__(self, members: list[nn.Module], generators: list[torch.Generator], nhwc: bool = False) -> None:
        self.members, self.generators, self.training = members, generators, True
        chains = [_chain(m) for m in members]
        k = len(members)
        self.ops: list[_Op] = []
        for i, module in enumerate(chains[0]):
            layers = [chain[i] for chain in chains]
            kind = _kind(module)
            if kind == "linear":
                self.ops.append(_Linear(layers))  # type: ignore[arg-type]
            elif kind == "conv":
                self.ops.append(_Conv(layers, nhwc))  # type: ignore[arg-type]
            elif kind == "norm":
                self.ops.append(_BatchNorm(layers))  # type: ignore[arg-type]
            elif kind == "dropout":
                self.ops.append(_Dropout(module, generators, lambda: self.training, nhwc))
            elif kind == "flatten":
                self.ops.append(_Flatten(k))
            else:
                self.ops.append(_Stateless(layers))

    def parameters(self) -> list[Tensor]:
        return [p for op in self.ops for p in op.params]

    def weights(self) -> list[tuple[Tensor, tuple[int, ...]]]:
        return [w for op in self.ops for w in op.weights]

    def state_dict(self) -> dict[str, Any]:
        """The parameters and the batch norms' running statistics, as a checkpoint holds them."""
        norms = [op for op in self.ops if isinstance(op, _BatchNorm)]
        return {"params": [p.detach().clone() for p in self.parameters()],
                "norms": [(op.running_mean.clone(), op.running_var.clone(), op.batches) for op in norms]}  # fmt: skip

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        for p, saved in zip(self.parameters(), state["params"], strict=True):
            p.copy_(saved)
        norms = [op for op in self.ops if isinstance(op, _BatchNorm)]
        for op, (mean, var, batches) in zip(norms, state["norms"], strict=True):
            op.running_mean.copy_(mean)
            op.running_var.copy_(var)
            op.batches = batches

    def __call__(self, x: Tensor, probe: bool = False) -> Tensor:
        """(K, B, ...) inputs, member k's batch in row k -> (K, B, classes) logits. With `probe`, each member's
        activation layers also see their own inputs (see _Stateless.probe)."""
        for op in self.ops:
            if probe and isinstance(op, _Stateless):
                op.probe(x)
            x = op(x)
        return to_flat(x, len(self.members)) if x.dim() != 3 else x

    @torch.no_grad()
    def write_back(self, members: list[int] | None = None) -> None:
        """Copy the stacked weights (and norm statistics) into the member modules, or into `members` only."""
        for k in range(len(self.members)) if members is None else members:
            for op in self.ops:
                op.write_back(k)

    @torch.no_grad()
    def write_grads(self, k: int) -> None:
        """Member k's gradients into its module's parameters' .grad."""
        for op in self.ops:
            op.write_grads(k)
