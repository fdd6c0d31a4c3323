"""Config tests: every YAML in every group composes and validates; wrong types fail at composition; validate
names the key, the bad value and the choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from dlzoo.cli import config_groups, precheck
from dlzoo.config.schema import TrainConfig, as_dict, settings
from dlzoo.config.validate import register_configs, validate
from dlzoo.engine.assembly.folders import output_problem
from dlzoo.errors import DlzooError
from dlzoo.models import ModelConfig
from dlzoo.paths import conf_dir

register_configs()
CONF = conf_dir()
# Group -> a known member, for groups that cannot be picked on their own (hydra/ is Hydra's).
SKIP_GROUPS = {"hydra"}


def compose_train(overrides: list[str] | None = None):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides or [])


def all_group_choices() -> list[tuple[str, str]]:
    return [(g, name) for g, names in config_groups().items() if g not in SKIP_GROUPS for name in names]


def test_the_walk_finds_every_yaml() -> None:
    walked = {f"{g}/{n}.yaml" for g, names in config_groups().items() for n in names}
    on_disk = {p.relative_to(CONF).as_posix() for p in CONF.rglob("*.yaml") if p.parent != CONF}
    assert walked == on_disk and len(walked) >= 20


@pytest.mark.parametrize(("group", "name"), all_group_choices())
def test_every_config_composes_validates_and_converts_to_typed_settings(group: str, name: str) -> None:
    cfg = compose_train([f"{group}={name}"])
    validate(cfg)
    # What a run passes below its boundary: the schema's dataclasses, holding what the checkpoints' config holds.
    typed = settings(cfg)
    assert isinstance(typed, TrainConfig) and isinstance(typed.model, ModelConfig)
    assert not any(OmegaConf.is_config(v) for v in vars(typed.model).values())
    assert as_dict(typed) == OmegaConf.to_container(cfg, resolve=True)


def test_defaults_are_the_lecture_recipe() -> None:
    cfg = compose_train()
    assert cfg.model.hidden == [512] * 4 and cfg.model.dropout == pytest.approx(0.3)
    assert (cfg.optim.name, cfg.optim.lr) == ("adam", 0.001)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size, cfg.trainer.seed) == (15, 100, 777)
    assert cfg.data.val_size == 5000


@pytest.mark.parametrize(
    ("experiment", "model", "lr"),
    [
        ("lab10_1_softmax", [], 0.001),
        ("lab10_2_mlp", [256, 256], 0.001),
        ("lab10_3_xavier", [256, 256], 0.001),
        ("lab10_4_deep", [512] * 4, 0.001),
        ("lab10_5_dropout", [512] * 4, 0.001),
        ("lab10_7_bn", [512] * 4, 0.01),
    ],
)
def test_experiments_set_the_lab_recipe(experiment: str, model: list[int], lr: float) -> None:
    cfg = compose_train([f"experiment={experiment}"])
    assert list(cfg.model.hidden) == model and cfg.optim.lr == pytest.approx(lr)


def test_experiment_with_debug_preset() -> None:
    cfg = compose_train(["experiment=lab10_3_xavier", "debug=fast"])
    assert cfg.model.init == "xavier_uniform" and cfg.trainer.max_steps == 20 and cfg.data.train_subset == 2000


@pytest.mark.parametrize("override", ["trainer.epochs=abc", "optim.lr=fast", "model.hidden=12", "data.download=maybe"])
def test_wrong_types_fail_at_composition(override: str) -> None:
    with pytest.raises((HydraException, OmegaConfBaseException)):
        compose_train([override])


def test_unknown_group_member_fails_at_composition() -> None:
    with pytest.raises(HydraException, match="mlp_dropout"):
        compose_train(["model=nope"])


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("model.activation=rleu", "Did you mean 'relu'"),
        ("model.init=glorot", "xavier_uniform"),
        ("model.bias_init=xavier_uniform", "cannot initialize a bias"),
        ("optim.name=adamm", "adagrad, adam, adamax, adamw, momentum, nadam"),
        ("data.name=cifar", "fashion_mnist, mnist"),
        ("optim.lr=0", "optim.lr=0.0 is out of range"),
        ("model.dropout=1.0", "in [0, 1)"),
        ("model.hidden=[512,0]", "model.hidden"),
        ("trainer.epochs=0", "trainer.epochs"),
        ("optim=nesterov optim.momentum=0", "> 0 for optim.name=nesterov"),
        ("trainer.batch_size=-1", "trainer.batch_size"),
        ("trainer.device=gpu", "auto, cpu, cuda"),
        ("model.norm_position=middle", "'before' or 'after'"),
        ("model.act_args.negative_slope=-0.1", "model.act_args.negative_slope=-0.1 is out of range"),
        ("model.act_args.maxout_k=1", ">= 2"),
        ("model.act_args.rrelu_range=[0.3,0.1]", "lower <= upper"),
        ("model.init_args.mode=fan_max", "fan_in or fan_out or fan_avg"),
        ("model.init_args.std=0", "model.init_args.std"),
        ("model.dropout_kind=gaussian", "alpha_dropout, dropout"),
        ("reg.l2=-1", "reg.l2"),
        ("reg.clip_norm=0", "> 0 or null"),
        ("trainer.early_stop.monitor=train/acc", "val/loss or val/acc"),
        ("eval.mc_samples=-2", "eval.mc_samples"),
        ("data.normalize=zscore", "none or standardize"),
        ("sched=piecewise sched.lr_values=[0.1]", "3 positive lrs"),
        ("sched=onecycle sched.momentum_range=[0.95,0.85]", "low <= high"),
        ("trainer.precision=fp8", "fp32 | bf16 | fp16"),
        ("trainer.precision=fp16 trainer.device=cpu", "use trainer.precision=bf16 on the CPU"),
        ("trainer.compile_mode=fastest", "default | reduce-overhead | max-autotune"),
    ],
)
def test_validate_names_key_value_and_choices(override: str, expected: str) -> None:
    cfg = compose_train(override.split())
    with pytest.raises(DlzooError) as info:
        validate(cfg)
    assert expected in str(info.value)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.betas=${optim.lr}", "optim.betas='${optim.lr}' resolves to 0.001, but optim.betas must be a list"),
        ("model.hidden=${trainer.epochs}", "model.hidden='${trainer.epochs}' resolves to 15"),
        ("model.act_args=${optim.lr}", "model.act_args must be a mapping"),
        ("model.hidden=${nope}", "model.hidden could not be resolved"),
    ],
)
def test_an_interpolation_of_the_wrong_kind_is_a_clean_error(override: str, expected: str) -> None:
    # The fuzz test found these: OmegaConf type-checks interpolated scalars only, so a list key that resolves to
    # a number used to reach the range checks and raise a TypeError.
    with pytest.raises(DlzooError, match="Invalid config") as e:
        validate(compose_train([override]))
    assert expected in str(e.value)


def test_an_interpolation_of_the_right_kind_passes() -> None:
    validate(compose_train(["optim.betas=${sched.momentum_range}"]))


def test_validate_reports_every_problem_at_once() -> None:
    cfg = compose_train(["optim.lr=-1", "model.activation=nope", "trainer.epochs=0"])
    with pytest.raises(DlzooError) as info:
        validate(cfg)
    for key in ("optim.lr", "model.activation", "trainer.epochs"):
        assert key in str(info.value)


def test_conf_dir_is_the_repo_tree_in_a_checkout() -> None:
    assert Path(__file__).resolve().parents[3] / "conf" == CONF


def test_selu_warnings_name_what_breaks_self_normalization() -> None:
    from dlzoo.config.validate import warnings

    bad = compose_train(["model.activation=selu", "model.norm=batch", "model.dropout=0.2"])
    text = " ".join(warnings(bad))
    for expected in ("batch norm", "alpha_dropout", "lecun_normal", "data.normalize=standardize"):
        assert expected in text
    assert warnings(compose_train(["experiment=selu_self_normalizing"])) == []
    assert warnings(compose_train()) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trainer.stack=100000"], "must be between 1 and 256"),
        (["trainer.stack=200", "model.hidden=[4096,4096]"], "x trainer.stack=200 makes 4,005,888,000 weights"),
        (["optim.lr=${oc.env:DLZOO_TEST_UNSET}"], "export DLZOO_TEST_UNSET=<value> first"),
        (["hydra/launcher=nope"], "Unknown hydra/launcher 'nope'"),
        (["-m", "hydra/launcher=paralel", "trainer.seed=1,2"], "Did you mean parallel?"),
        (["hydra.run.dir=/tmp/ünï"], """'hydra.run.dir="/tmp/ünï"'"""),
    ],
)
def test_what_hydra_would_fail_on_is_said_before_it_starts(args: list[str], expected: str) -> None:
    """Sizes, unset environment variables, unknown launchers and unquoted characters: one paragraph with the
    fix from dlzoo's precheck (exit 2), where Hydra or the allocator would give a traceback (exit 1) or a kill."""
    problem = precheck(args)
    assert problem is not None and expected in problem


@pytest.mark.parametrize(
    ("folder", "expected"),
    [("/proc/dlzoo_run", "(proc), a kernel interface"), ("/sys/dlzoo_run", "(sysfs), a kernel interface"),
     ("outputs/" + "a" * 300, "is 300 bytes, and a file system allows 255")],
)  # fmt: skip
def test_an_output_folder_that_cannot_exist_is_refused_before_hydra_makes_it(folder: str, expected: str) -> None:
    if folder.startswith("/") and not Path(folder).parent.is_dir():
        pytest.skip(f"no {Path(folder).parent} on this machine")
    problem = output_problem([f"hydra.run.dir={folder}"])
    assert problem is not None and expected in problem
    assert output_problem(["hydra.run.dir=outputs/fine"]) is None
