"""Lecture 10-4's Lego: networks written in YAML as lists of blocks (conv, pool, flatten, linear, dropout,
batchnorm, act, residual, branches). Each block is built against the shape flowing into it, so a mistake is
reported before training, naming the block, the shape it got and the shape it needed."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dlzoo.errors import DlzooError
from dlzoo.models.activations import ACTIVATIONS, ActArgs
from dlzoo.models.init import INITIALIZERS, InitArgs
from dlzoo.models.norm_dropout import DROPOUTS
from dlzoo.registry import Registry

Shape = tuple[int, ...]  # per-sample: (C, H, W) for images, (F,) once flat


@dataclass(frozen=True)
class Defaults:
    """What a block falls back to when its spec does not say: the model config's choices."""

    activation: str = "relu"
    act_args: ActArgs = field(default_factory=ActArgs)
    dropout: float = 0.0
    dropout_kind: str = "dropout"


@dataclass(frozen=True)
class BlockType:
    build: Callable[[dict[str, Any], Shape, Defaults, str], tuple[nn.Module, Shape]]
    keys: frozenset[str]  # every key the spec may hold besides `type`
    required: frozenset[str] = frozenset()


BLOCKS: Registry[BlockType] = Registry("block", "model.blocks[].type")


def _register(name: str, doc: str, keys: set[str], required: set[str] = frozenset()):
    def add(fn: Callable[[dict[str, Any], Shape, Defaults, str], tuple[nn.Module, Shape]]) -> Callable:
        BLOCKS.register(name, doc)(BlockType(fn, frozenset(keys), frozenset(required)))
        return fn

    return add


class Residual(nn.Module):
    """Fast-forward (He et al. 2015): f(x) + x, with a 1x1 conv or linear projection when the shapes differ."""

    show_in_summary = True

    def __init__(self, body: nn.Module, projection: nn.Module | None) -> None:
        super().__init__()
        self.body, self.projection = body, projection

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.projection is None else self.projection(x))


class Branches(nn.Module):
    """Split & merge (Inception, Szegedy et al. 2015): run each path on the same input, then concatenate the
    outputs along channels (or features) or sum them."""

    show_in_summary = True

    def __init__(self, paths: list[nn.Module], merge: str) -> None:
        super().__init__()
        self.paths, self.merge = nn.ModuleList(paths), merge

    def forward(self, x: Tensor) -> Tensor:
        outs = [path(x) for path in self.paths]
        return torch.cat(outs, dim=1) if self.merge == "concat" else torch.stack(outs).sum(0)


def _known(registry: Registry[Any], name: object, where: str) -> None:
    """A name inside a block is blamed on the block's own key (model.blocks[3].name), not on the model default."""
    if name not in registry:
        raise DlzooError(registry.unknown_message(name, where))


# Block keys that count things: a 0 or a negative value would divide by zero or build an empty layer.
_POSITIVE = ("out", "kernel", "stride", "in")


def _check_numbers(spec: dict[str, Any], where: str) -> None:
    for key in _POSITIVE:
        value = spec.get(key)
        if key in spec and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise DlzooError(f"{where} ({spec['type']}): {key}={value!r} must be a whole number >= 1.")
    pad = spec.get("padding")
    if "padding" in spec and pad not in ("same", "valid") and (isinstance(pad, bool) or not isinstance(pad, int)
                                                               or pad < 0):  # fmt: skip
        raise DlzooError(f"{where} ({spec['type']}): padding={pad!r}; choices: same, valid, or a whole number >= 0.")
    if "init_std" in spec and not (isinstance(spec["init_std"], (int, float)) and spec["init_std"] > 0):
        raise DlzooError(f"{where} ({spec['type']}): init_std={spec['init_std']!r} must be a number > 0.")


def _init_mark(module: nn.Module, spec: dict[str, Any], path: str = "model.blocks") -> nn.Module:
    """A per-block initializer (e.g. the labs' conv W ~ N(0, 0.01)) that build_model applies after the global one."""
    if "init" in spec:
        _known(INITIALIZERS, spec["init"], f"{path}.init")
        module.dlzoo_init = (spec["init"], InitArgs(std=float(spec.get("init_std", 1.0))))
    return module


def _need_image(shape: Shape, path: str, kind: str) -> None:
    if len(shape) != 3:
        raise DlzooError(
            f"{path} ({kind}) needs an image input (C, H, W) but gets a flat (N, {shape[0]}): a {kind} block must "
            "come before flatten/linear."
        )


def _check_in(spec: dict[str, Any], actual: int, path: str, kind: str, what: str) -> None:
    if "in" in spec and (isinstance(spec["in"], bool) or not isinstance(spec["in"], int)):
        raise DlzooError(f"{path} ({kind}): in={spec['in']!r} must be a whole number of input {what} (or left out).")
    if "in" in spec and spec["in"] != actual:
        raise DlzooError(
            f"{path} ({kind}) expects {spec['in']} input {what} but the block before it gives {actual}. Fix: drop "
            f"`in` (dlzoo infers it) or make it {actual}."
        )


def _same_padding(kernel: int, stride: int) -> int:
    return (kernel - 1) // 2  # for odd kernels: output = ceil(N / stride), TF's 'same'


@_register("conv", "2-D convolution: out, kernel=3, stride=1, padding=same|valid|N, bias, init, init_std",
           {"out", "kernel", "stride", "padding", "bias", "init", "init_std", "in"}, {"out"})  # fmt: skip
def _conv(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    _need_image(shape, path, "conv")
    c, h, w = shape
    _check_in(spec, c, path, "conv", "channels")
    k, s, pad = int(spec.get("kernel", 3)), int(spec.get("stride", 1)), spec.get("padding", "same")
    if pad == "same" and k % 2 == 0:
        raise DlzooError(f"{path} (conv): padding=same needs an odd kernel, got {k}. Fix: kernel {k + 1} or valid.")
    p = _same_padding(k, s) if pad == "same" else 0 if pad == "valid" else int(pad)
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1  # the lecture's (N - F) / stride + 1
    if out_h < 1 or out_w < 1:
        raise DlzooError(
            f"{path} (conv): a {k}x{k} kernel, stride {s}, padding {p} on a {h}x{w} input leaves {out_h}x{out_w} "
            f"((N - F + 2P) / stride + 1). Fix: padding=same, a smaller kernel, or fewer pooling steps before it."
        )
    conv = nn.Conv2d(c, int(spec["out"]), k, s, p, bias=bool(spec.get("bias", True)))
    return _init_mark(conv, spec, path), (int(spec["out"]), out_h, out_w)


def _pool(kind: type[nn.Module]) -> Callable[[dict[str, Any], Shape, Defaults, str], tuple[nn.Module, Shape]]:
    def build(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
        _need_image(shape, path, spec["type"])
        c, h, w = shape
        k = int(spec.get("kernel", 2))
        s = int(spec.get("stride", k))
        same = spec.get("padding", "valid") == "same"

        # TF's 'same': output ceil(N / s) with pad_total = (out - 1) * s + k - N split left/right (the odd one
        # on the right, which ceil_mode's extra window reproduces).
        def size(n: int) -> int:
            if not same:
                return (n - k) // s + 1
            pad = max((math.ceil(n / s) - 1) * s + k - n, 0) // 2
            out = math.ceil((n + 2 * pad - k) / s) + 1
            return out - 1 if (out - 1) * s >= n + pad else out  # ceil_mode never starts a window past the input

        p = max((math.ceil(h / s) - 1) * s + k - h, 0) // 2 if same else 0
        if size(h) < 1 or size(w) < 1:
            raise DlzooError(f"{path} ({spec['type']}): a {k}x{k} window on a {h}x{w} input leaves nothing.")
        extra = {"count_include_pad": False} if kind is nn.AvgPool2d else {}  # TF averages real pixels only
        return kind(k, s, p, ceil_mode=same, **extra), (c, size(h), size(w))

    return build


_register("maxpool", "max pooling: kernel=2, stride=kernel, padding=valid|same", {"kernel", "stride", "padding"})(
    _pool(nn.MaxPool2d)
)
_register("avgpool", "average pooling: kernel=2, stride=kernel, padding=valid|same", {"kernel", "stride", "padding"})(
    _pool(nn.AvgPool2d)
)


@_register("flatten", "(N, C, H, W) -> (N, C*H*W)", set())
def _flatten(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    return nn.Flatten(), (math.prod(shape),)


@_register("linear", "fully connected: out, bias, init, init_std", {"out", "bias", "init", "init_std", "in"}, {"out"})
def _linear(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    if len(shape) != 1:
        raise DlzooError(
            f"{path} (linear) needs a flat input but gets (N, {', '.join(map(str, shape))}). Fix: put "
            "{type: flatten} before it."
        )
    _check_in(spec, shape[0], path, "linear", "features")
    layer = nn.Linear(shape[0], int(spec["out"]), bias=bool(spec.get("bias", True)))
    return _init_mark(layer, spec, path), (int(spec["out"]),)


@_register("dropout", "dropout: p (default model.dropout), kind (default model.dropout_kind)", {"p", "kind"})
def _dropout(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    p = spec.get("p", d.dropout)
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise DlzooError(f"{path} (dropout): p={p!r} must be a number in [0, 1), e.g. p: 0.3.")
    if not 0 <= p < 1:
        raise DlzooError(f"{path} (dropout): p={p} must be in [0, 1).")
    if "kind" in spec:
        _known(DROPOUTS, spec["kind"], f"{path}.kind")
    return DROPOUTS.get(spec.get("kind", d.dropout_kind))(p), shape


@_register("batchnorm", "batch normalization over channels (images) or features", set())
def _batchnorm(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    return (nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])), shape


@_register("act", "activation: name (default model.activation)", {"name"})
def _act(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    if "name" in spec:
        _known(ACTIVATIONS, spec["name"], f"{path}.name")
    act = ACTIVATIONS.get(spec.get("name", d.activation))
    if act.pieces(d.act_args) != 1:
        raise DlzooError(f"{path} (act): maxout changes the width and is only available in arch=mlp.")
    return act.build(shape[0], d.act_args), shape


@_register("residual", "f(x) + x over its own `blocks`; projects x when the shapes differ", {"blocks"}, {"blocks"})
def _residual(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    body, out = build_blocks(spec["blocks"], shape, d, f"{path}.blocks")
    projection: nn.Module | None = None
    if out != shape:
        if len(out) != len(shape):
            raise DlzooError(f"{path} (residual): its blocks turn {shape} into {out}; f(x) + x needs the same rank.")
        if len(shape) == 3:
            stride = shape[1] // out[1]
            if (shape[1] + stride - 1) // stride != out[1]:
                raise DlzooError(f"{path} (residual): cannot project {shape} onto {out} with a strided 1x1 conv.")
            projection = nn.Conv2d(shape[0], out[0], 1, stride, bias=False)
        else:
            projection = nn.Linear(shape[0], out[0], bias=False)
    return Residual(body, projection), out


@_register("branches", "split & merge: `paths` (lists of blocks) on the same input, merge=concat|sum",
           {"paths", "merge"}, {"paths"})  # fmt: skip
def _branches(spec: dict[str, Any], shape: Shape, d: Defaults, path: str) -> tuple[nn.Module, Shape]:
    merge = spec.get("merge", "concat")
    if merge not in ("concat", "sum"):
        raise DlzooError(f"{path} (branches): merge={merge!r}; choices: concat, sum.")
    if not isinstance(spec["paths"], (list, tuple)) or not spec["paths"]:
        raise DlzooError(f"{path} (branches): paths must be a non-empty list of block lists, e.g. "
                         "[[{type: conv, out: 8, kernel: 1}], [{type: conv, out: 8}]].")  # fmt: skip
    built = [build_blocks(p, shape, d, f"{path}.paths[{i}]") for i, p in enumerate(spec["paths"])]
    shapes = [s for _, s in built]
    if merge == "sum" and len(set(shapes)) > 1:
        raise DlzooError(f"{path} (branches): merge=sum needs equal shapes, the paths give {shapes}.")
    if merge == "concat" and len({s[1:] for s in shapes}) > 1:
        raise DlzooError(
            f"{path} (branches): merge=concat needs the same spatial size on every path, they give {shapes}. "
            "Fix: padding=same in each path's convs, and the same pooling."
        )
    out = shapes[0] if merge == "sum" else (sum(s[0] for s in shapes), *shapes[0][1:])
    return Branches([m for m, _ in built], merge), out


def build_blocks(
    specs: list[Any], shape: Shape, d: Defaults, path: str = "model.blocks"
) -> tuple[nn.Sequential, Shape]:
    """Build `specs` in order against the input `shape`; returns the module and the output shape.

    Each block is also run once on a zero batch, so anything the shape rules above miss still fails here with
    the block's name rather than in the middle of training."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise DlzooError(
            f"{path} must be a non-empty list of blocks, e.g. [{{type: flatten}}, {{type: linear, out: 10}}]."
        )
    modules = []
    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        if not isinstance(spec, dict) or "type" not in spec:
            raise DlzooError(
                f"{where} must be a mapping with a `type`; got {spec!r}. Types: {', '.join(BLOCKS.names())}."
            )
        if spec["type"] not in BLOCKS:
            raise DlzooError(f"{where}: {BLOCKS.unknown_message(spec['type'])}")
        kind = BLOCKS.get(spec["type"])
        unknown = set(spec) - kind.keys - {"type"}
        missing = kind.required - set(spec)
        if unknown or missing:
            problem = f"unknown keys {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
            raise DlzooError(f"{where} ({spec['type']}): {problem}; it takes {sorted(kind.keys) or 'no keys'}.")
        _check_numbers(spec, where)
        module, out = kind.build(dict(spec), shape, d, where)
        with torch.no_grad():
            try:
                got = tuple(module.eval()(torch.zeros(2, *shape)).shape[1:])
            except RuntimeError as e:
                raise DlzooError(f"{where} ({spec['type']}) fails on input (N, {shape}): {e}") from None
        module.train()
        if got != out:  # the rules above and the module disagree: trust the module, say so loudly
            raise DlzooError(f"{where} ({spec['type']}): expected output {out}, the layer gives {got}.")
        modules.append(module)
        shape = out
    return nn.Sequential(*modules), shape
