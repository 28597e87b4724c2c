"""The fine-tuning loop shared by `train`, `distill` (and later `qat`): one place for the schedule,
augmentation, validation, early stopping, mixed precision, seeding, checkpoints and resume."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from edgepress.progress import Progress

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class LoopSettings:
    epochs: int = 10
    batch_size: int = 64
    optimizer: Literal["sgd", "adamw"] = "sgd"
    learning_rate: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: int = 0
    step_epochs: int = 30
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: Literal["none", "crop_flip"] = "none"
    crop_padding: int = 4
    validation_split: float = 0.0
    early_stopping_patience: int | None = None
    precision: Literal["fp32", "bf16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError("epochs and batch_size must be positive")
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be positive")
        if not 0.0 <= self.validation_split < 0.5:
            raise ValueError("validation_split must be in [0, 0.5)")
        if self.early_stopping_patience is not None and self.validation_split == 0.0:
            raise ValueError("early_stopping_patience needs a validation_split")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ValueError("warmup_epochs must be in [0, epochs)")


# loss(model, inputs, labels) -> scalar tensor
LossFn = Callable[[Any, Any, Any], Any]


def resume_key(*, source_sha256: str, settings: Any) -> str:
    text = json.dumps({"source": source_sha256, "settings": asdict(settings)}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _device(kind: str):
    import torch

    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def _bf16_is_fast(device, log: Callable[[str], None]) -> bool:
    """bf16 autocast only where the hardware has it: emulated on AVX2 it was 20x slower than fp32."""
    import torch

    from edgepress.progress import say

    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not supported:
        message = f"precision bf16 requested, but this {device.type} has no native bf16; training in fp32"
        log(message)
        say(f"warning: {message}")
    return supported


def _lr_factor(settings: LoopSettings, steps_per_epoch: int) -> Callable[[int], float]:
    warmup = settings.warmup_epochs * steps_per_epoch
    total = settings.epochs * steps_per_epoch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if settings.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
        if settings.schedule == "step":
            return settings.step_gamma ** ((step // steps_per_epoch) // settings.step_epochs)
        return 1.0

    return factor


def _augment(batch, *, padding: int, generator):
    """Random crop after zero padding, and horizontal flip, per sample."""
    import torch

    n, _, height, width = batch.shape
    padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(batch)
    for i in range(n):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top:top + height, left:left + width]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def fit(model, *, inputs, labels, settings: LoopSettings, loss_fn: LossFn, resume_dir: Path | None,
        key: str, log: Callable[[str], None], label: str = "train",
        extra_modules: torch.nn.Module | None = None) -> list[dict[str, float]]:
    """Train `model` in place; returns per-epoch history. Resumes from `resume_dir` when its key matches.

    `extra_modules` trains alongside `model` without being part of it, e.g. the
    distillation hint adapters: its parameters join the optimizer and its state the resume checkpoint.
    """
    import torch

    from edgepress.atomic import atomic_path

    torch.manual_seed(settings.seed)
    device = _device(settings.device)
    model.to(device)
    if extra_modules is not None:
        extra_modules.to(device).train()
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(settings.seed))
    n_val = int(len(inputs) * settings.validation_split)
    train_idx, val_idx = order[n_val:], order[:n_val]
    steps_per_epoch = math.ceil(len(train_idx) / settings.batch_size)
    parameters = list(model.parameters()) + (list(extra_modules.parameters()) if extra_modules is not None else [])
    if settings.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=settings.learning_rate, momentum=settings.momentum,
                                    weight_decay=settings.weight_decay, nesterov=settings.momentum > 0)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(settings, steps_per_epoch))
    history: list[dict[str, float]] = []
    start_epoch, best_val, best_state, stale = 0, -1.0, None, 0

    checkpoint = resume_dir / "last.pt" if resume_dir is not None else None
    if checkpoint is not None and checkpoint.is_file():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        if saved.get("key") == key:
            model.load_state_dict(saved["model"])
            if extra_modules is not None:
                extra_modules.load_state_dict(saved["extra"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            start_epoch, best_val, best_state, stale = saved["epoch"], saved["best_val"], saved["best_state"], saved["stale"]
            history = saved["history"]
            torch.set_rng_state(saved["rng"])
            log(f"resuming {label} after epoch {start_epoch} from {checkpoint}")
        else:
            log(f"ignoring {checkpoint}: it belongs to other settings or another input")

    autocast = settings.precision == "bf16" and _bf16_is_fast(device, log)
    progress = Progress(label, total=settings.epochs)
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        # Seeded per epoch, so a resumed run sees exactly the batches an uninterrupted one would.
        generator = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        shuffled = train_idx[torch.randperm(len(train_idx), generator=generator)]
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, len(shuffled), settings.batch_size):
            index = shuffled[start:start + settings.batch_size]
            batch = inputs[index]
            if settings.augment == "crop_flip":
                batch = _augment(batch, padding=settings.crop_padding, generator=generator)
            batch, target = batch.to(device), labels[index].to(device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                loss, logits = loss_fn(model, batch, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == target).sum())
            seen += len(index)
        record = {"epoch": epoch + 1, "loss": total_loss / seen, "train_accuracy": correct / seen,
                  "learning_rate": scheduler.get_last_lr()[0]}
        if n_val:
            record["val_accuracy"] = evaluate(model, inputs[val_idx], labels[val_idx], device=device)
            if record["val_accuracy"] > best_val:
                best_val, stale = record["val_accuracy"], 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(record)
        log(f"{label} epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        progress.update(epoch + 1, note=f"loss {record['loss']:.3f} acc {record['train_accuracy']:.3f}"
                        + (f" val {record['val_accuracy']:.3f}" if n_val else ""))
        stop = settings.early_stopping_patience is not None and stale >= settings.early_stopping_patience
        if checkpoint is not None:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = {"key": key, "epoch": epoch + 1, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_val": best_val,
                     "best_state": best_state, "stale": stale, "history": history, "rng": torch.get_rng_state()}
            if extra_modules is not None:
                state["extra"] = {k: v.detach().cpu() for k, v in extra_modules.state_dict().items()}
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
        if stop:
            log(f"early stopping after epoch {epoch + 1}: no better validation accuracy for {stale} epochs")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.to("cpu").eval()
    return history


def evaluate(model, inputs, labels, *, device, batch_size: int = 256) -> float:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            logits = model(inputs[start:start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == labels[start:start + batch_size]).sum())
    model.train()
    return correct / max(1, len(inputs))
