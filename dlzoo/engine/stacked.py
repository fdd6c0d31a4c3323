"""K seeds of one MLP trained as one batched model (`trainer.stack=K`): the members' weights stacked on a new
leading dimension, every Linear layer one batched matmul, and per-member semantics those of K separate runs:
each member starts from the weights a standalone run with its seed builds, draws its own batch order and its own
dropout masks from the very random streams that run would use, and its gradient is its own (the loss is the sum
of the members' mean losses; Adam, SGD and their kin update element by element, so one optimizer over the stacked
tensors is K optimizers). What a standalone run does beyond that (per-member clipping, early stopping, resume,
layers with their own parameters or statistics) is refused by config.validate before any work."""

from __future__ import annotations

import copy
import math
import shutil
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dlzoo.console import console, print_warning
from dlzoo.data.splits import Splits
from dlzoo.engine import member
from dlzoo.engine.checkpoint import save_checkpoint
from dlzoo.engine.evaluation import evaluate
from dlzoo.engine.folders import metadata, write_json
from dlzoo.engine.hparams import chosen_columns
from dlzoo.engine.state import FitResult, step_counts
from dlzoo.engine.tracking import RunTracker, Tracker, summary_markdown
from dlzoo.models.norm_dropout import Dropout
from dlzoo.models.summary import Summary
from dlzoo.optim import build_optimizer, build_scheduler


@dataclass
class _Op:
    kind: str  # flatten | linear | act | dropout
    module: nn.Module | None = None
    index: int = 0  # the linear layer's index in weights/biases
    p: float = 0.0


class StackedMLP:
    """K MLPs of one architecture as stacked tensors: weights (K, in, out), biases (K, out)."""

    def __init__(self, members: list[nn.Module], generators: list[torch.Generator]) -> None:
        self.members, self.generators = members, generators
        self.ops: list[_Op] = []
        linears: list[list[nn.Linear]] = []
        modules = [list(_leaves(m)) for m in members]
        for i, module in enumerate(modules[0]):
            if isinstance(module, nn.Flatten):
                self.ops.append(_Op("flatten"))
            elif isinstance(module, nn.Linear):
                self.ops.append(_Op("linear", index=len(linears)))
                linears.append([ms[i] for ms in modules])  # type: ignore[misc]
            elif isinstance(module, Dropout):
                self.ops.append(_Op("dropout", p=module.p))
            elif not any(True for _ in module.parameters()) and not any(True for _ in module.buffers()):
                self.ops.append(_Op("act", module))  # element-wise and stateless: runs on the stack as is
            else:
                raise ValueError(f"cannot stack {type(module).__name__}")
        with torch.no_grad():
            # (K, in, out): the batched matmul then reads both operands contiguously, forward and backward.
            self.weights = [torch.stack([lin.weight.t() for lin in layer]).requires_grad_() for layer in linears]
            self.biases = [torch.stack([lin.bias for lin in layer]).requires_grad_() for layer in linears]
        self._linears = linears
        self.training = True

    def parameters(self) -> list[Tensor]:
        return [p for pair in zip(self.weights, self.biases, strict=True) for p in pair]

    def __call__(self, x: Tensor) -> Tensor:
        """(K, B, ...) inputs, member k's batch in row k -> (K, B, classes) logits."""
        for op in self.ops:
            if op.kind == "flatten":
                x = x.flatten(2)
            elif op.kind == "linear":
                w, b = self.weights[op.index], self.biases[op.index]
                x = torch.baddbmm(b.unsqueeze(1), x, w)
            elif op.kind == "act":
                assert op.module is not None
                x = op.module(x)
            elif self.training and op.p > 0:
                # Member k's mask from member k's stream, drawn as its standalone run's Dropout draws it on the
                # CPU (on CUDA that Dropout uses torch's fused kernel, so there the masks are independent, not equal).
                shape = x.shape[1:]
                keep = torch.stack([torch.rand(shape, generator=g, device=x.device) >= op.p for g in self.generators])
                x = x * keep * (1.0 / (1.0 - op.p))
        return x

    @torch.no_grad()
    def write_back(self) -> None:
        """Copy the stacked weights into the member modules (for evaluation, checkpoints, the test)."""
        for layer, w, b in zip(self._linears, self.weights, self.biases, strict=True):
            for k, lin in enumerate(layer):
                lin.weight.copy_(w[k].t())
                lin.bias.copy_(b[k])


def _leaves(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if not list(m.children())]


@dataclass
class _Member:
    order: torch.Generator  # the batch order, seeded as the standalone run's
    tracker: Tracker
    history: list[dict[str, float]] = field(default_factory=list)
    diverged_at: int | None = None  # from this step on its curves stop: a NaN loss is not plotted


def fit_stacked(
    members: list[nn.Module],
    generators: list[torch.Generator],
    seeds: list[int],
    trackers: list[Tracker],
    data: Splits,
    cfg: DictConfig,
) -> list[FitResult]:
    """Train the K `members` (each already built, seeded and initialized as its standalone run builds it;
    `generators[k]` holds the global random stream that run would continue with) in one batched pass."""
    t = cfg.trainer
    device, n, bs = data.x_train.device, len(data.y_train), t.batch_size
    steps_per_epoch, total = step_counts(n, bs, t.epochs, t.max_steps)
    stack = StackedMLP(members, generators)
    optimizer = build_optimizer(cfg.optim, stack.parameters())
    scheduler = build_scheduler(cfg.sched, optimizer, steps_per_epoch, total)
    state = [_Member(torch.Generator(device=device).manual_seed(s), tr) for s, tr in zip(seeds, trackers, strict=True)]
    k_all, step, train_time, samples = len(members), 0, 0.0, 0
    for epoch in range(1, t.epochs + 1):
        for m in state:
            m.tracker.on_epoch_start(epoch, steps_per_epoch)
        perms = torch.stack([torch.randperm(n, generator=m.order, device=device) for m in state])
        loss_sum = torch.zeros(k_all, device=device)
        correct = torch.zeros(k_all, device=device, dtype=torch.long)
        seen, t0 = 0, time.perf_counter()
        for i in range(steps_per_epoch):
            idx = perms[:, i * bs : (i + 1) * bs]
            x = data.prep(data.x_train[idx.flatten()]).unflatten(0, idx.shape)
            y = data.y_train[idx]
            logits = stack(x)
            losses = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(idx.shape).mean(1)
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # member k's gradient is that of its own mean loss
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += losses.detach() * idx.shape[1]
            correct += (logits.detach().argmax(2) == y).sum(1)
            seen += idx.shape[1]
            if step % t.log_every_n_steps == 0:
                values, rate = losses.tolist(), seen / max(time.perf_counter() - t0, 1e-9)
                for m, value in zip(state, values, strict=True):
                    if m.diverged_at is None and not math.isfinite(value):
                        m.diverged_at = step  # the others train on: their gradients never see this loss
                    if m.diverged_at is None:
                        m.tracker.log_step(step, value, scheduler.get_last_lr()[0], rate)
            if t.max_steps is not None and step >= t.max_steps:
                break
        train_time += time.perf_counter() - t0
        samples += seen
        stack.write_back()
        _end_epoch(state, members, data, cfg, epoch, step, loss_sum, correct, seen, scheduler.get_last_lr()[0])
        if t.max_steps is not None and step >= t.max_steps:
            break
    return [_result(m, step, train_time, samples) for m in state]


def _end_epoch(
    state: list[_Member],
    members: list[nn.Module],
    data: Splits,
    cfg: DictConfig,
    epoch: int,
    step: int,
    loss_sum: Tensor,
    correct: Tensor,
    seen: int,
    lr: float,
) -> None:
    """Each member's epoch: its train means, its validation, logged to its own run."""
    for m, model, loss, right in zip(state, members, loss_sum.tolist(), correct.tolist(), strict=True):
        val_loss, val_acc = evaluate(model, data.x_val, data.y_val, cfg.trainer.eval_batch_size, data.prep)
        metrics = {"train/loss": loss / seen, "train/acc": right / seen, "val/loss": val_loss, "val/acc": val_acc,
                   "lr": lr}  # fmt: skip
        if m.diverged_at is None and not math.isfinite(metrics["train/loss"]):
            m.diverged_at = step
        m.history.append({"epoch": epoch, **metrics})
        m.tracker.log_epoch(epoch, step, metrics)


def _result(m: _Member, steps: int, train_time: float, seen: int) -> FitResult:
    final = m.history[-1]
    return FitResult(epochs=len(m.history), steps=steps, train_loss=final["train/loss"], train_acc=final["train/acc"],
                     val_loss=final["val/loss"], val_acc=final["val/acc"], train_time_s=train_time, train_samples=seen,
                     weights_epoch=int(final["epoch"]), history=m.history)  # fmt: skip


def diverged(results: list[FitResult]) -> list[int]:
    """The members whose loss became NaN or infinite (reported; the others' results stand)."""
    return [k for k, r in enumerate(results) if not math.isfinite(r.train_loss)]


def train_stacked(
    cfg: DictConfig, config: dict[str, Any], hparams: dict[str, Any], data: Splits, device: torch.device, out_dir: Path
) -> dict[str, Any]:
    """trainer.stack=K: seeds seed..seed+K-1 trained in one pass, each written to `out_dir`/seed<s> as its
    standalone run writes its folder (metrics.json, checkpoints/last.pt with the final weights, TensorBoard, and
    a .hydra/ with the seed's own config, so `dlzoo report` groups them as seeds); returns the stack's summary."""
    t, k_all = cfg.trainer, cfg.trainer.stack
    seeds = [t.seed + k for k in range(k_all)]
    console.print(f"training {k_all} seeds ({seeds[0]}..{seeds[-1]}) as one stacked model -> {out_dir}/seed<s> "
                  f"(the progress bar follows seed {seeds[0]})")  # fmt: skip
    models, generators, trackers, summaries, metas = [], [], [], [], []
    with ExitStack() as stack:
        for k, seed in enumerate(seeds):
            # Each member's setup is its standalone run's, in the same order, so its random stream is too.
            folder = out_dir / f"seed{seed}"
            model, _, summary = member.setup_model(cfg, hparams, data, device, seed, None, quiet=k > 0)
            tracker = stack.enter_context(RunTracker(folder, t.epochs, t.progress and k == 0, label=f"seed {seed}  "))
            meta = metadata(seed, device) | {"data_mean": data.mean, "data_std": data.std, "stacked": k_all}
            tracker.log_text("run/meta", meta)
            if t.figures:
                tracker.log_graph(model, data.prep(data.x_train[:2]))
            generator = torch.Generator(device=device)
            generator.set_state(torch.get_rng_state() if device.type == "cpu" else torch.cuda.get_rng_state(device))
            models.append(model.train())
            generators.append(generator)
            trackers.append(tracker)
            summaries.append(summary)
            metas.append(meta)
        results = fit_stacked(models, generators, seeds, trackers, data, cfg)
        members = [
            _finish_member(cfg, config, hparams, data, out_dir / f"seed{seed}", *parts)
            for seed, *parts in zip(seeds, models, results, trackers, summaries, metas, strict=True)
        ]
    bad = [seeds[k] for k in diverged(results)]
    if bad:
        print_warning(f"seed(s) {bad} diverged (their loss became NaN or infinite); the other seeds' results stand.")
    accs = [m["test_acc"] for m in members]
    mean = sum(accs) / k_all
    std = math.sqrt(sum((a - mean) ** 2 for a in accs) / (k_all - 1))
    return {"test_acc": mean, "test_acc_std": std, "stack": k_all, "seeds": seeds, "member_test_acc": accs,
            "diverged_seeds": bad, "steps": results[0].steps, "epochs": results[0].epochs,
            "train_time_s": results[0].train_time_s,
            "train_samples_per_s": sum(r.train_samples for r in results) / max(results[0].train_time_s, 1e-9),
            }  # fmt: skip


def _finish_member(
    cfg: DictConfig,
    config: dict[str, Any],
    hparams: dict[str, Any],
    data: Splits,
    folder: Path,
    model: nn.Module,
    result: FitResult,
    tracker: RunTracker,
    summary: Summary,
    meta: dict[str, Any],
) -> dict[str, Any]:
    """A stacked member's end, as its standalone run's: test scores, text tab, images, HParams, checkpoint,
    metrics.json, and the .hydra/ config of a standalone run with its seed."""
    seed = meta["seed"]
    own = copy.deepcopy(config)
    own["trainer"] |= {"seed": seed, "stack": 1}
    metrics = member.test_scores(cfg, model, data, result, tracker) | {
        k: v for k, v in meta.items() if k not in ("data_mean", "data_std")
    }
    member.log_texts(tracker, cfg, own, metrics, summary_markdown(summary))
    title = f"{member.model_name(cfg, hparams)}, seed {seed}"
    if cfg.trainer.figures:
        member.log_pictures(tracker, cfg, [model], data, result.steps, title)
    seeded = [o for o in member.overrides() if not o.startswith(("trainer.stack=", "trainer.seed="))]
    tracker.log_hparams(hparams | {"trainer.seed": seed}, cfg.trainer.hparams_experiment,
                        chosen_columns(hparams, seeded))  # fmt: skip
    if cfg.trainer.checkpoint.enabled:
        save_checkpoint(folder / "checkpoints" / "last.pt", {"model": model.state_dict(), "epoch": result.epochs,
                        "step": result.steps, "history": result.history, "config": own, "meta": meta})  # fmt: skip
    hydra = folder / ".hydra"
    hydra.mkdir(parents=True, exist_ok=True)
    (hydra / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(own)))
    (hydra / "overrides.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create([*seeded, f"trainer.seed={seed}"])))
    parent = folder.parent / ".hydra" / "hydra.yaml"  # the config group choices, which are the stack's
    if parent.is_file():
        shutil.copyfile(parent, hydra / "hydra.yaml")
    write_json(folder / "metrics.json", metrics)
    return metrics
