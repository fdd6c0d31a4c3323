"""`dlzoo eval` and `dlzoo predict`: load a checkpoint with the config it was trained with, then score it on the
test set (optionally with MC dropout) or classify new images (.npy arrays or image files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from PIL import Image
from rich.table import Table

from dlzoo.config.compose import bad_value, compose_config, config_groups
from dlzoo.config.schema import TrainConfig, settings
from dlzoo.config.validate import validate
from dlzoo.console import console, print_final, print_warning
from dlzoo.data.build import build_splits, num_classes
from dlzoo.data.datasets import DATASETS
from dlzoo.data.splits import to_float
from dlzoo.engine.assembly.folders import checkpoint_file, load_checkpoint, write_json
from dlzoo.engine.training.evaluation import evaluate, evaluate_ensemble, mc_evaluate
from dlzoo.engine.training.loop import resolve_device
from dlzoo.errors import DlzooError
from dlzoo.models import build_model


def parse_args(args: list[str], required: tuple[str, ...]) -> tuple[dict[str, list[str]], list[str]]:
    """Split the words into this command's own keys (ckpt, input, format) and Hydra overrides, which apply to the
    checkpoint's config as they would to `dlzoo train`'s (`data=fashion_mnist`, `data.root=<dir>`)."""
    own: dict[str, list[str]] = {}
    overrides = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep:
            raise DlzooError(f"{arg!r} is not key=value. Example: dlzoo eval ckpt=outputs/runs/<run> data.root=<dir>")
        if key in ("ckpt", "input", "format"):
            own.setdefault(key, []).extend(v for v in value.split(",") if v)
        else:
            overrides.append(arg)
    for key in required:
        if key not in own:
            example = "dlzoo predict ckpt=outputs/runs/<run> input=digit.png" if "input" in required else \
                "dlzoo eval ckpt=outputs/runs/<run>"  # fmt: skip
            raise DlzooError(f"{key}=... is required. Example: {example}")
    return own, overrides


def apply_overrides(saved: dict[str, Any], overrides: list[str]) -> DictConfig:
    """The checkpoint's config with `overrides`: a config-group choice (`data=fashion_mnist`) replaces that whole
    section by the group's YAML, as in `dlzoo train`; `key=value` then sets single keys."""
    groups = [o for o in overrides if o.split("=", 1)[0] in config_groups()]
    keys = [o for o in overrides if o not in groups]
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(TrainConfig), saved)
    except OmegaConfBaseException as e:  # a key or type this version does not know: another version wrote it
        raise DlzooError(
            f"The checkpoint's config does not fit this dlzoo version: {' '.join(str(e).split())[:300]}. Fix: use "
            "the checkpoint with the dlzoo version that wrote it (its metrics.json names it), or retrain."
        ) from None
    if groups:
        composed = compose_config(groups)
        for override in groups:
            group = override.split("=", 1)[0]
            cfg[group] = composed[group]
    for override in keys:
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([override.lstrip("+")]))
        except OmegaConfBaseException as e:
            raise DlzooError(bad_value(override, str(e))) from None
    validate(cfg)
    return cfg


def load_model(ckpt: str | Path, overrides: list[str]) -> tuple[torch.nn.Module, TrainConfig, dict[str, Any], Path]:
    """The checkpoint's model in eval mode on the configured device, and its config with `overrides` applied, as
    typed settings (dlzoo.config.schema.settings)."""
    folder = Path(ckpt).expanduser()
    path = checkpoint_file(folder)
    seeds = sorted(folder.glob("seed*/checkpoints/last.pt")) if folder.is_dir() and not path.is_file() else []
    if seeds or path.name == "stack.pt":
        run = path.parent.parent if path.name == "stack.pt" else folder
        seed = sorted(run.glob("seed*"))
        fix = f"one of them, e.g. ckpt={seed[0]}" if seed else f"the ensemble folder, ckpt={run}"
        raise DlzooError(f"{run} is a stacked run (trainer.stack): each of its models is a run of its own. Fix: give "
                         f"{fix}.")  # fmt: skip
    state = load_checkpoint(path)
    cfg = settings(apply_overrides(state["config"], overrides))
    device = resolve_device(cfg.trainer.device)
    meta = state.get("meta", {})
    shape = DATASETS.get(cfg.data.name).shape
    batch = torch.zeros(2, *shape)  # LSUV already ran at training time: any batch will do to build the layers
    model = build_model(cfg.model, shape, num_classes(cfg.data), batch)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise DlzooError(
            f"{path}'s weights do not fit the model these overrides build ({str(e).splitlines()[0]}). "
            "Fix: drop the model overrides; eval uses the architecture it was trained with."
        ) from None
    return model.to(device).eval(), cfg, meta, path


def members(folder: Path) -> list[Path]:
    """An ensemble run's member folders (member0/, member1/, ...) that hold a checkpoint, in order."""
    found = [p for p in folder.glob("member*") if (p / "checkpoints" / "last.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("member") or 0))


def eval_command(args: list[str]) -> dict[str, float]:
    """Score a checkpoint on its dataset's validation and test splits; writes eval-<ckpt>.json beside it."""
    own, overrides = parse_args(args, ("ckpt",))
    folder = Path(own["ckpt"][0]).expanduser()
    if folder.is_dir() and not checkpoint_file(folder).is_file() and members(folder):
        return eval_ensemble(folder, overrides)
    model, cfg, _, path = load_model(folder, overrides)
    data = build_splits(cfg.data, next(model.parameters()).device)
    bs = cfg.trainer.eval_batch_size
    val_loss, val_acc = evaluate(model, data.x_val, data.y_val, bs, data.prep)
    test_loss, test_acc = evaluate(model, data.x_test, data.y_test, bs, data.prep)
    metrics = {"val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc}
    if cfg.eval.mc_samples > 0:
        mc_acc, mc_entropy = mc_evaluate(model, data.x_test, data.y_test, cfg.eval.mc_samples, bs, data.prep)
        metrics |= {"test_mc_acc": mc_acc, "test_mc_entropy": mc_entropy}
    console.print(f"checkpoint {path}")
    print_final(metrics, *_save_scores(path.parent / f"eval-{path.stem}.json", metrics))
    return metrics


def _save_scores(out: Path, metrics: dict[str, Any]) -> tuple[Path, str]:
    """Write the scores beside the checkpoint; a read-only folder costs the file, never the printed result."""
    try:
        write_json(out, metrics)
    except OSError as e:
        print_warning(f"could not save the scores to {out} ({e.strerror or e}); they are printed below only.")
        return out, "not written: the folder is read-only"
    return out, "the scores as JSON"


def eval_ensemble(folder: Path, overrides: list[str]) -> dict[str, Any]:
    """Score an ensemble run folder: each member on the test set, then the members combined by the run's rule."""
    loaded = [load_model(m, overrides) for m in members(folder)]
    cfg = loaded[0][1]
    data = build_splits(cfg.data, next(loaded[0][0].parameters()).device)
    bs = cfg.trainer.eval_batch_size
    member_acc = [evaluate(model, data.x_test, data.y_test, bs, data.prep)[1] for model, *_ in loaded]
    combined = evaluate_ensemble([m for m, *_ in loaded], data.x_test, data.y_test, cfg.ensemble.combine, bs, data.prep)
    metrics: dict[str, Any] = {
        "test_acc": combined,
        "ensemble_size": len(loaded),
        "combine": cfg.ensemble.combine,
        "member_test_acc": member_acc,
        "member_test_acc_mean": sum(member_acc) / len(loaded),
    }
    console.print(f"ensemble {folder}: {len(loaded)} members")
    print_final(metrics, *_save_scores(folder / "eval-ensemble.json", metrics))
    return metrics


def _as_images(a: np.ndarray, name: str) -> np.ndarray:
    """A .npy array as (N, 28, 28) real, finite pixel values, or a DlzooError saying what it holds instead."""
    if a.dtype.kind not in "biuf":
        raise DlzooError(f"{name} holds {a.dtype} values, not pixel numbers. Fix: save a real-valued array "
                         "(uint8 in [0, 255] or floats in [0, 1]).")  # fmt: skip
    shape = a.shape
    if shape == (28, 28):
        a = a[None]
    elif len(shape) == 2 and shape[1] == 784:
        a = a.reshape(-1, 28, 28)
    elif not (len(shape) == 3 and shape[1:] == (28, 28)):
        raise DlzooError(f"{name} has shape {shape}; dlzoo reads (28, 28), (N, 28, 28) or (N, 784) grayscale "
                         "arrays. Fix: convert colour images to grayscale and resize them to 28x28.")  # fmt: skip
    if not np.isfinite(a).all():
        raise DlzooError(f"{name} holds NaN or infinite values. Fix: replace them before predicting.")
    return a


MAX_INPUT_VALUES = 100_000_000  # 100,000 images of 28x28: what one predict call reads (about 100 MB as uint8)


def read_inputs(paths: list[str]) -> tuple[list[str], torch.Tensor]:
    """Images as (N, 1, 28, 28) uint8: .npy arrays of (28, 28), (N, 28, 28) or (N, 784) in [0, 255] or [0, 1],
    or image files (converted to grayscale and resized to 28x28; MNIST digits are white on black)."""
    names, arrays = [], []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DlzooError(f"input {name!r} does not exist. Fix: give .npy files or images, comma-separated.")
        try:
            if path.suffix == ".npy":
                # Memory-mapped first: a header can claim any shape, so its size is checked before it is read.
                a = np.load(path, allow_pickle=False, mmap_mode="r")  # a pickled object array could run code
                if a.size > MAX_INPUT_VALUES:
                    raise DlzooError(f"{name} holds {a.size:,} values, more than predict reads at once "
                                     f"({MAX_INPUT_VALUES:,}). Fix: split it into smaller .npy files.")  # fmt: skip
                a = _as_images(np.array(a), name)
                if np.issubdtype(a.dtype, np.floating) and a.max() <= 1.0:
                    a = a * 255.0
            else:
                a = np.asarray(Image.open(path).convert("L").resize((28, 28)))[None]
        except DlzooError:
            raise
        except Exception as e:  # anything a damaged or hostile file raises (EOF, a decompression bomb, a header)
            raise DlzooError(
                f"Cannot read {name} as 28x28 images: {e}. Fix: .npy of shape (N, 28, 28) or an image."
            ) from None
        arrays.append(np.clip(a, 0, 255).astype(np.uint8))
        names += [name] if len(a) == 1 else [f"{name}[{i}]" for i in range(len(a))]
    return names, torch.from_numpy(np.concatenate(arrays)).unsqueeze(1)


@torch.inference_mode()
def predict_command(args: list[str]) -> list[dict[str, Any]]:
    """Class and probabilities for each input image; a table, or JSON lines with format=json."""
    own, overrides = parse_args(args, ("ckpt", "input"))
    model, cfg, meta, _ = load_model(own["ckpt"][0], overrides)
    names, images = read_inputs(own["input"])
    x = to_float(images.to(next(model.parameters()).device))
    x = (x - meta.get("data_mean", 0.0)) / meta.get("data_std", 1.0)  # the training run's input scaling
    probs = model(x).float().softmax(1).cpu()
    classes = DATASETS.get(cfg.data.name).classes
    rows = []
    for name, p in zip(names, probs, strict=True):
        top = p.argsort(descending=True)[:3].tolist()
        rows.append({"input": name, "class": top[0], "label": classes[top[0]], "probability": p[top[0]].item(),
                     "probabilities": [round(v, 6) for v in p.tolist()]})  # fmt: skip
        rows[-1]["top3"] = [(classes[i], round(p[i].item(), 4)) for i in top]
    if own.get("format") == ["json"]:
        for row in rows:
            print(json.dumps(row))
        return rows
    table = Table(title=f"predictions ({cfg.data.name})", title_justify="left")
    for column in ("input", "class", "probability", "top 3"):
        table.add_column(column)
    for row in rows:
        top3 = ", ".join(f"{label} {prob:.3f}" for label, prob in row["top3"])
        table.add_row(row["input"], f"{row['class']} ({row['label']})", f"{row['probability']:.4f}", top3)
    console.print(table)
    return rows
