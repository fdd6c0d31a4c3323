"""Evaluation over whole splits in a few large batches: plain (loss, accuracy) and MC dropout (Gal & Ghahramani
2016: accuracy and predictive entropy of the averaged stochastic predictions)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dlzoo.data.splits import to_float
from dlzoo.models.norm_dropout import is_dropout

Prep = Callable[[Tensor], Tensor]


@torch.inference_mode()
def evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 10000, prep: Prep = to_float
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split in a few large batches (eval mode, restored after)."""
    if len(labels) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=labels.device)
    correct = torch.zeros((), device=labels.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        logits = model(prep(images[start : start + batch_size]))
        y = labels[start : start + batch_size]
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    return loss_sum.item() / len(labels), correct.item() / len(labels)


@torch.inference_mode()
def mc_evaluate(
    model: nn.Module, images: Tensor, labels: Tensor, samples: int, batch_size: int = 10000, prep: Prep = to_float
) -> tuple[float, float]:
    """MC dropout (Gal & Ghahramani 2016): average the softmax of `samples` passes with dropout on (batch norm
    stays in eval mode). Returns (accuracy, mean predictive entropy in nats) of the averaged prediction."""
    was_training = model.training
    model.eval()
    for module in model.modules():
        if is_dropout(module):
            module.train()
    correct = torch.zeros((), device=labels.device, dtype=torch.long)
    entropy = torch.zeros((), device=labels.device)
    for start in range(0, len(labels), batch_size):
        x = prep(images[start : start + batch_size])
        probs = torch.stack([model(x).float().softmax(1) for _ in range(samples)]).mean(0)
        correct += (probs.argmax(1) == labels[start : start + batch_size]).sum()
        entropy += -(probs * probs.clamp_min(1e-12).log()).sum()
    model.train(was_training)
    return correct.item() / len(labels), entropy.item() / len(labels)


@torch.inference_mode()
def evaluate_ensemble(
    models: list[nn.Module],
    images: Tensor,
    labels: Tensor,
    combine: str,
    batch_size: int = 10000,
    prep: Prep = to_float,
) -> float:
    """Accuracy of the members' combined prediction: summed logits (lab 11-5's rule) or averaged softmax."""
    for m in models:
        m.eval()
    correct = torch.zeros((), device=labels.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        x = prep(images[start : start + batch_size])
        outs = [m(x).float() for m in models]
        score = (
            torch.stack(outs).sum(0) if combine == "sum_logits" else torch.stack([o.softmax(1) for o in outs]).mean(0)
        )
        correct += (score.argmax(1) == labels[start : start + batch_size]).sum()
    return correct.item() / len(labels)


@torch.inference_mode()
def predict_probs(
    models: list[nn.Module], images: Tensor, combine: str = "sum_logits", batch_size: int = 10000, prep: Prep = to_float
) -> Tensor:
    """Class probabilities for every image (eval mode, restored after): one model's softmax, or the members'
    combined scores as evaluate_ensemble ranks them (softmax of the summed logits, or the mean softmax)."""
    was = [m.training for m in models]
    for m in models:
        m.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = prep(images[start : start + batch_size])
        logits = torch.stack([m(x).float() for m in models])
        out.append(logits.sum(0).softmax(1) if combine == "sum_logits" else logits.softmax(2).mean(0))
    for m, training in zip(models, was, strict=True):
        m.train(training)
    return torch.cat(out) if out else torch.zeros(0)
