"""Block-list (Lego) models: every block type, TF's 'same' size rule, shape errors that name the block, every
model preset taking a real training step, and ensembles."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dlzoo.engine.training.evaluation import evaluate_ensemble
from dlzoo.errors import DlzooError
from dlzoo.models.sequential import BLOCKS, Defaults, build_blocks

IMAGE = (3, 12, 12)
# One example spec per block type, with the output shape it must give on a (3, 12, 12) input.
EXAMPLES = {
    "conv": ({"type": "conv", "out": 8}, (8, 12, 12)),
    "maxpool": ({"type": "maxpool", "kernel": 2}, (3, 6, 6)),
    "avgpool": ({"type": "avgpool", "kernel": 3, "padding": "same"}, (3, 4, 4)),
    "flatten": ({"type": "flatten"}, (432,)),
    "dropout": ({"type": "dropout", "p": 0.5}, IMAGE),
    "batchnorm": ({"type": "batchnorm"}, IMAGE),
    "act": ({"type": "act", "name": "elu"}, IMAGE),
    "residual": ({"type": "residual", "blocks": [{"type": "conv", "out": 6, "stride": 2}]}, (6, 6, 6)),
    "branches": (
        {"type": "branches", "paths": [[{"type": "conv", "out": 4, "kernel": 1}], [{"type": "conv", "out": 5}]]},
        (9, 12, 12),
    ),
}


def test_every_block_type_has_an_example() -> None:
    assert set(EXAMPLES) | {"linear"} == set(BLOCKS.names())


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_block_gives_its_shape(name: str) -> None:
    spec, out = EXAMPLES[name]
    model, shape = build_blocks([spec], IMAGE, Defaults())
    assert shape == out and model(torch.randn(4, *IMAGE)).shape == (4, *out)


def test_linear_after_flatten_and_residual_projection_on_features() -> None:
    specs = [{"type": "flatten"}, {"type": "residual", "blocks": [{"type": "linear", "out": 20}]}]
    model, shape = build_blocks(specs, IMAGE, Defaults())
    assert shape == (20,) and isinstance(model[1].projection, nn.Linear)


@given(n=st.integers(1, 40), k=st.sampled_from([1, 3, 5]), s=st.integers(1, 3))
def test_same_padding_gives_tf_output_size(n: int, k: int, s: int) -> None:
    for spec in ({"type": "conv", "out": 2, "kernel": k, "stride": s},
                 {"type": "maxpool", "kernel": k, "stride": s, "padding": "same"}):  # fmt: skip
        _, shape = build_blocks([spec], (1, n, n), Defaults())
        assert shape[1:] == (math.ceil(n / s), math.ceil(n / s)), spec


def test_lab11_pooling_reaches_4x4x128() -> None:
    from dlzoo.models.sequential import build_blocks as build

    conv_pool = [{"type": "conv", "out": 128}, {"type": "maxpool", "kernel": 2, "padding": "same"}]
    _, shape = build(conv_pool * 3, (1, 28, 28), Defaults())
    assert shape == (128, 4, 4)  # 28 -> 14 -> 7 -> 4, as TF's 'same' pooling


@pytest.mark.parametrize(
    ("specs", "shape", "expected"),
    [
        ([{"type": "linear", "out": 10}], (1, 28, 28), "model.blocks[0] (linear) needs a flat input but gets (N, 1"),
        ([{"type": "flatten"}, {"type": "linear", "out": 10, "in": 1000}], (1, 28, 28),
         "model.blocks[1] (linear) expects 1000 input features but the block before it gives 784"),
        ([{"type": "flatten"}, {"type": "conv", "out": 4}], (1, 28, 28), "model.blocks[1] (conv) needs an image input"),
        ([{"type": "conv", "out": 4, "kernel": 5, "padding": "valid"}], (1, 3, 3), "leaves -1x-1"),
        ([{"type": "conv", "out": 4, "kernal": 3}], (1, 28, 28), "unknown keys ['kernal']"),
        ([{"type": "conv"}], (1, 28, 28), "missing ['out']"),
        ([{"type": "convolution", "out": 4}], (1, 28, 28), "choices: act, avgpool, batchnorm, branches, conv"),
        ([{"type": "branches", "paths": [[{"type": "conv", "out": 2}], [{"type": "maxpool"}]]}], (1, 28, 28),
         "model.blocks[0] (branches): merge=concat needs the same spatial size"),
        ([{"type": "residual", "blocks": [{"type": "flatten"}]}], (1, 28, 28), "needs the same rank"),
        ([{"type": "residual", "blocks": [{"type": "flatten"}, {"type": "linear"}]}], (1, 28, 28),
         "model.blocks[0].blocks[1] (linear): missing ['out']"),
    ],
)  # fmt: skip
def test_shape_errors_name_the_block_and_the_shapes(specs: list, shape: tuple, expected: str) -> None:
    with pytest.raises(DlzooError) as info:
        build_blocks(specs, shape, Defaults())
    assert expected in str(info.value)


def test_block_init_overrides_the_model_init() -> None:
    from omegaconf import OmegaConf

    from dlzoo.config.validate import ModelConfig
    from dlzoo.models import build_model

    cfg = OmegaConf.structured(ModelConfig(arch="sequential", init="xavier_uniform"))
    cfg.blocks = [{"type": "conv", "out": 64, "bias": False, "init": "normal", "init_std": 0.01},
                  {"type": "flatten"}, {"type": "linear", "out": 10}]  # fmt: skip
    torch.manual_seed(0)
    model = build_model(cfg, (1, 28, 28), 10)
    assert model[0].weight.std().item() == pytest.approx(0.01, rel=0.1) and model[0].bias is None
    assert model[2].weight.abs().max() <= math.sqrt(6 / (64 * 784 + 10))


def model_presets() -> list[str]:
    from dlzoo.cli import config_groups

    return config_groups()["model"]


@pytest.mark.parametrize("preset", model_presets())
def test_every_model_preset_takes_a_training_step(preset: str) -> None:
    from dlzoo.models import build_model
    from tests.unit.config.test_config import compose_train

    cfg = compose_train([f"model={preset}"])
    torch.manual_seed(0)
    model = build_model(cfg.model, (1, 28, 28), 10, init_batch=torch.rand(8, 1, 28, 28))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_rnn_reads_rows_as_a_sequence() -> None:
    from dlzoo.models.rnn import RowRNN

    model = RowRNN((1, 28, 28), 10, [16, 8], cell="gru")
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    assert model.layers[0].input_size == 28 and model.layers[1].hidden_size == 8


class Fixed(nn.Module):
    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.logits = torch.tensor(logits)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[: len(x)]


def test_ensemble_rules_differ_where_they_should() -> None:
    # Member A is very sure of class 0; members B and C mildly prefer class 1.
    a, b = Fixed([[10.0, 0.0]]), Fixed([[0.0, 1.0]])
    x, y = torch.zeros(1, 1, 1, 1, dtype=torch.uint8), torch.tensor([1])
    assert evaluate_ensemble([a, b, b, b], x, y, "sum_logits") == 0.0  # 10 > 3: A's confidence wins
    assert evaluate_ensemble([a, b, b, b], x, y, "mean_probs") == 1.0  # (0 + 3 * 0.73) / 4 = 0.55 > 0.5
    assert evaluate_ensemble([b], x, y, "sum_logits") == 1.0


def test_the_mlp_presets_are_expressible_as_blocks() -> None:
    from dlzoo.models.mlp import MLP

    mlp = MLP(784, 10, [256, 256])  # lab 10-3's net
    blocks = [{"type": "flatten"}, {"type": "linear", "out": 256}, {"type": "act"}, {"type": "linear", "out": 256},
              {"type": "act"}, {"type": "linear", "out": 10}]  # fmt: skip
    seq, shape = build_blocks(blocks, (1, 28, 28), Defaults())
    assert shape == (10,)
    assert sum(p.numel() for p in seq.parameters()) == sum(p.numel() for p in mlp.parameters())
    seq.load_state_dict(dict(zip(seq.state_dict(), mlp.state_dict().values(), strict=True)))
    x = torch.rand(4, 1, 28, 28)
    assert torch.allclose(seq(x), mlp(x))


# Values a hand-written YAML block may hold, the hostile ones included.
_VALUES = st.one_of(st.integers(-2, 40), st.sampled_from(["same", "valid", "relu", "rleu", "", "x"]),
                    st.floats(-1, 2), st.just(float("nan")), st.booleans(), st.none())  # fmt: skip
_KEYS = st.sampled_from(["out", "kernel", "stride", "padding", "bias", "init", "init_std", "in", "p", "kind", "name",
                         "merge"])  # fmt: skip


@st.composite
def _block(draw: st.DrawFn, depth: int = 0) -> dict:
    kind = draw(st.sampled_from(BLOCKS.names()))
    spec = {"type": kind} | draw(st.dictionaries(_KEYS, _VALUES, max_size=4))
    if kind in ("residual",) and depth < 2:
        spec["blocks"] = draw(st.lists(_block(depth + 1), max_size=3))
    if kind == "branches" and depth < 2:
        spec["paths"] = draw(st.lists(st.lists(_block(depth + 1), max_size=2), max_size=3))
    return spec


def test_any_block_list_builds_or_gives_a_clean_error() -> None:
    """300 random block lists, hostile values included: each builds, or fails with a DlzooError naming the block;
    any other exception (ZeroDivisionError, IndexError, ValueError...) fails the test."""
    from dlzoo.errors import DlzooError

    tried = []

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(st.lists(_block(), min_size=0, max_size=5))
    def case(specs: list[dict]) -> None:
        tried.append(specs)
        with contextlib.suppress(DlzooError):
            build_blocks(specs, IMAGE, Defaults())

    case()
    assert len(tried) >= 300
