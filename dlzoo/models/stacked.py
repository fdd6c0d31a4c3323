"""K networks of one architecture as one (`trainer.stack=K`), stacked as PyTorch's "Model ensembling" tutorial does:
`torch.func.stack_module_state` gives every parameter and buffer a leading dimension of size K, and `torch.vmap`
runs the members' own forward on them, as functional_call would (a Linear becomes one bmm, a conv one grouped conv,
batch norm keeps each member's running statistics). One optimizer step over the stacked tensors is K element-wise
optimizer steps. Hand-written here only what vmap cannot do: each member's dropout masks and the per-layer probes."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import stack_module_state, vmap

from dlzoo.models.norm_dropout import _SELU_SATURATION, AlphaDropout, Dropout, is_dropout


def why_not(model: nn.Module) -> str | None:
    """None when `model` can be stacked, else what stops it (for config validation), with the reason."""
    for module in model.modules():
        if isinstance(module, nn.RNNBase):
            return f"{type(module).__name__} layers (torch.vmap has no batching rule for the fused recurrent kernel)"
        if isinstance(module, nn.RReLU):
            return "RReLU layers (they draw random slopes from the global stream, not from each member's)"
        if is_dropout(module) and type(module) not in (Dropout, AlphaDropout):
            return f"{type(module).__name__} layers (only dlzoo's dropouts draw their masks from each member's stream)"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats and \
                module.momentum is None:  # fmt: skip
            return "batch norm with a cumulative average (its factor reads the batch count on the host)"
    return None


def _nhwc(t: Tensor, kernel: bool = False) -> Tensor:
    """(K, B, C, H, W) laid out as (B, H, W, K, C) (a kernel's (K, O, I, h, w) as (K, O, h, w, I)), so that the
    grouped convolution's (B, K*C, H, W) view of it is channels_last without a copy."""
    # Copied into fresh memory rather than .contiguous(), which keeps a size-1 dim's stride (a 1-channel kernel's),
    # and the convolution reads the layout from the strides.
    k, a, b, h, w = t.shape
    if kernel:
        return t.new_empty(k, a, h, w, b).permute(0, 1, 4, 2, 3).copy_(t)
    return t.new_empty(a, h, w, k, b).permute(3, 0, 4, 1, 2).copy_(t)


class _Masked(nn.Module):
    """A dropout layer whose keep-mask comes from outside: vmap can only draw random numbers from one stream for
    all members, but each member must draw from its own, as its standalone run does (see StackedNet._masks)."""

    def __init__(self, p: float, alpha: bool, feed: list[Any]) -> None:
        super().__init__()
        self.p, self.alpha, self.feed = p, alpha, feed

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0:
            return x
        if self.p == 1 and not self.alpha:  # as Dropout: no mask drawn
            return x * 0
        if not self.feed or not isinstance(self.feed[0], Tensor):  # the shape pass: what this layer would draw
            self.feed.append((tuple(x.shape), self.p))
            return x
        keep = self.feed.pop(0)
        if not self.alpha:
            return x * keep * (1.0 / (1.0 - self.p))
        a = ((1 - self.p) * (1 + self.p * _SELU_SATURATION**2)) ** -0.5
        return torch.where(keep, x, _SELU_SATURATION) * a - a * _SELU_SATURATION * self.p


class StackedNet:
    """The K `members` (each built and initialized as its standalone run builds it) as one batched model;
    `generators[k]` is member k's random stream (its dropout masks); `nhwc`: the members run channels_last, so their
    dropout masks fill NHWC memory order. `params` and `buffers` hold the stacked tensors by the members' own names."""

    def __init__(self, members: list[nn.Module], generators: list[torch.Generator], nhwc: bool = False) -> None:
        self.members, self.generators, self.nhwc = members, generators, nhwc
        params, self.buffers = stack_module_state(members)
        # A Linear weight is stored (K, in, out) and handed to the members' forward transposed: the batched matmul
        # then reads both operands contiguously, forward and backward, where (K, out, in) costs a copy per step.
        linear = {f"{n}.weight" for n, m in members[0].named_modules() if isinstance(m, nn.Linear)}
        self.transposed = {n for n in params if n in linear}
        self.params = {n: p.detach().transpose(1, 2).contiguous().requires_grad_() if n in self.transposed else p
                       for n, p in params.items()}  # fmt: skip
        if nhwc:  # each member's kernels channels_last, so vmap's grouped convolution runs the members' NHWC kernels
            self.params |= {n: _nhwc(p.detach(), True).requires_grad_() for n, p in self.params.items() if p.dim() == 5}
        self.feed: list[Any] = []
        self.base = copy.deepcopy(members[0]).to("meta")  # the members' forward; its tensors come from params
        self.dropouts: list[_Masked] = []
        for name, module in list(self.base.named_modules()):
            if type(module) in (Dropout, AlphaDropout):
                parent, _, child = name.rpartition(".")
                masked = _Masked(module.p, type(module) is AlphaDropout, self.feed)
                setattr(self.base.get_submodule(parent), child, masked)
                self.dropouts.append(masked)
        # Where each stacked tensor goes in `base`: its module's _parameters or _buffers dict, by the tensor's name.
        self.slots = [(self.base.get_submodule(n.rpartition(".")[0])._parameters, n.rpartition(".")[2])
                      for n in self.params] + [(self.base.get_submodule(n.rpartition(".")[0])._buffers,
                                                n.rpartition(".")[2]) for n in self.buffers]  # fmt: skip
        self.draws: dict[tuple[int, ...], list[tuple[tuple[int, ...], float]]] = {}

    def parameters(self) -> list[Tensor]:
        return list(self.params.values())

    def weights(self) -> list[tuple[Tensor, tuple[int, ...]]]:
        """The weight matrices and kernels (what reg.l1/l2/max_norm act on), each with the dims that hold one
        unit's incoming weights in one member's slice (the standalone rules' `flatten(1)`)."""
        return [(p, (1,) if n in self.transposed else tuple(range(2, p.dim())))
                for n, p in self.params.items() if n.endswith("weight") and p.dim() > 2]  # fmt: skip

    def member_params(self, k: int) -> dict[str, Tensor]:
        """Member k's parameters as its module names and shapes them: views into the stacked tensors."""
        return {n: p[k].t() if n in self.transposed else p[k] for n, p in self.params.items()}

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        """The stacked parameters and buffers by name, as stack.pt holds them."""
        return {"params": {n: p.detach().clone() for n, p in self.params.items()},
                "buffers": {n: b.clone() for n, b in self.buffers.items()}}  # fmt: skip

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, dict[str, Tensor]]) -> None:
        for group, saved in ((self.params, state["params"]), (self.buffers, state["buffers"])):
            for n, t in group.items():
                t.copy_(saved[n])

    def _masks(self, x: Tensor) -> list[Tensor]:
        """Each dropout layer's (K, ...) keep-masks for the member inputs `x`: member k's drawn from its own
        generator with the shape (and, channels_last, the memory order) its standalone layer draws, so on the CPU
        the masks are its standalone run's (on CUDA that layer uses torch's fused kernel: independent masks)."""
        if not self.dropouts:
            return []
        draws = self.draws.get(tuple(x.shape))
        if draws is None:  # one pass on the meta device: no compute, just each dropout's input shape, in order
            self.feed.clear()
            with torch.no_grad():
                self.base(torch.empty(x.shape[1:], device="meta"))
            draws = self.draws[tuple(x.shape)] = list(self.feed)
            self.feed.clear()
        masks = []
        for shape, p in draws:
            nhwc = self.nhwc and len(shape) == 4
            draw = (shape[0], shape[2], shape[3], shape[1]) if nhwc else shape
            keep = torch.stack([torch.rand(draw, generator=g, device=x.device) for g in self.generators]) >= p
            masks.append(keep.permute(0, 1, 4, 2, 3) if nhwc else keep)
        return masks

    def _forward(self, tensors: tuple[Tensor, ...], masks: list[Tensor], x: Tensor) -> Tensor:
        """`base` run on `tensors` (its parameters, then its buffers, in `slots` order). functional_call does this
        too, at a cost per call that a small MLP's step notices; dlzoo's nets tie no weights, which is what its
        extra work is for."""
        self.feed[:] = masks
        own = [slot[name] for slot, name in self.slots]
        for (slot, name), t in zip(self.slots, tensors, strict=True):
            slot[name] = t
        try:
            return self.base(x)
        finally:
            for (slot, name), t in zip(self.slots, own, strict=True):
                slot[name] = t

    def __call__(self, x: Tensor, probe: Callable[[int], AbstractContextManager[Any]] | None = None) -> Tensor:
        """(K, B, ...) inputs, member k's batch in row k -> (K, B, classes) logits. With `probe` (member k's
        context, e.g. activation hooks on `base`), the members run one by one instead: forward hooks cannot read
        vmap's batched tensors, and the per-layer statistics must be each member's own."""
        masks = self._masks(x)
        if probe is None:
            x = _nhwc(x) if self.nhwc and x.dim() == 5 else x
            view = [p.transpose(1, 2) if n in self.transposed else p for n, p in self.params.items()]
            return vmap(self._forward)((*view, *self.buffers.values()), masks, x)
        outs = []
        for k in range(len(self.members)):
            with probe(k):
                own = (*self.member_params(k).values(), *(b[k] for b in self.buffers.values()))  # views: batch norm
                outs.append(self._forward(own, [m[k] for m in masks], x[k]))  # updates the stack in place
        return torch.stack(outs)

    @torch.no_grad()
    def write_back(self, members: list[int] | None = None) -> None:
        """Copy the stacked weights and buffers into the member modules, or into `members` only."""
        for k in range(len(self.members)) if members is None else members:
            own = self.member_params(k)
            for n, p in self.members[k].named_parameters():
                p.copy_(own[n])
            for n, b in self.members[k].named_buffers():
                b.copy_(self.buffers[n][k])

    @torch.no_grad()
    def write_grads(self, k: int) -> None:
        """Member k's gradients as its module's .grad (for the per-layer probes)."""
        for n, p in self.members[k].named_parameters():
            g = self.params[n].grad
            p.grad = None if g is None else (g[k].t() if n in self.transposed else g[k]).clone()
