"""Fuzz the config front door: random overrides either compose into a config that validate() accepts and that
really satisfies every range, or fail with a clean, one-paragraph error; nothing else, never a traceback."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlzoo.cli import compose_and_validate, precheck
from dlzoo.config.validate import registries

KEYS = [
    "optim.lr", "optim.momentum", "optim.eps", "optim.betas", "optim.name", "model.dropout", "model.hidden",
    "model.activation", "model.init", "model.bias_init", "model.norm", "model.norm_position",
    "model.act_args.maxout_k", "model.act_args.negative_slope", "model.init_args.mode", "trainer.epochs",
    "trainer.batch_size", "trainer.max_steps", "trainer.device", "trainer.seed", "data.name", "data.val_size",
    "data.normalize", "sched.name", "sched.factor", "reg.l2", "reg.clip_norm", "eval.mc_samples", "model", "optim",
    "sched", "no.such.key",
]  # fmt: skip
NAMES = sorted({n for registry, _ in registries().values() for n in registry.names()})
VALUES = st.one_of(
    st.integers(-5, 2000).map(str),
    st.floats(-10, 10, allow_nan=False).map(lambda f: f"{f:.4g}"),
    st.sampled_from(
        [
            "abc",
            "null",
            "true",
            "[]",
            "[512,0]",
            "[0.9,0.999]",
            "nan",
            "inf",
            "-inf",
            "''",
            "1e-3",
            "[1,2,3]",
            "{a: 1}",
            "cuda:0",
            "auto",
            "${optim.lr}",
            "${nope}",
        ]
    ),
    st.sampled_from(NAMES),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), min_size=1, max_size=4))
def test_random_overrides_give_a_valid_config_or_a_clean_error(pairs: list[tuple[str, str]]) -> None:
    overrides = [f"{k}={v}" for k, v in dict(pairs).items()]
    problem = precheck(overrides)  # exactly what `dlzoo train` runs before Hydra starts
    if problem is not None:
        assert problem.strip() and "Traceback" not in problem and "\n" not in problem
        return
    cfg = compose_and_validate(overrides)
    # Accepted: then every invariant that training relies on really holds.
    m, o, t = cfg.model, cfg.optim, cfg.trainer
    assert o.lr > 0 and 0 <= m.dropout < 1 and t.epochs >= 1 and t.batch_size >= 1
    assert all(h >= 1 for h in m.hidden) and m.act_args.maxout_k >= 2 and m.act_args.negative_slope >= 0
    for key, (registry, config_keys) in registries().items():
        for dotted in config_keys:
            node = cfg
            for part in dotted.split("."):
                node = node[part]
            assert node in registry, (key, node)


def test_a_sweep_is_checked_job_by_job_before_it_starts() -> None:
    problem = precheck(["-m", "model=mlp,mlp_deep", "optim.lr=0.001,-1"])
    assert problem is not None and problem.startswith("job ") and "optim.lr=-1" in problem
    assert precheck(["-m", "model=mlp,mlp_deep", "optim.lr=0.001,0.01"]) is None
    assert precheck(["--cfg", "job", "model=nope"]) is None  # Hydra's own flags pass through


def test_user_config_folders_are_searched_by_the_precheck(tmp_path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("arch: mlp\nhidden: [32]\n")
    assert precheck(["--config-dir", str(tmp_path), "model=mine"]) is None
    assert precheck([f"hydra.searchpath=[file://{tmp_path}]", "model=mine"]) is None
    assert "Unknown model config 'mine'" in (precheck(["model=mine"]) or "")
