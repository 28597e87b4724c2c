"""The fine-tuning loop shared by `train`, `distill` (and later `qat`): one place for the schedule,
augmentation, validation, early stopping, mixed precision, seeding, checkpoints and resume."""

from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

from edgepress.compress.training import distributed
from edgepress.core.errors import UserError
from edgepress.core.progress import Progress
from edgepress.core.schema import BATCH, EPOCHS, SAMPLES, SEEDS, bounded, setting, within

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
@bounded
class LoopSettings:
    epochs: int = within(*EPOCHS, default=10, help="passes over the training set")
    batch_size: int = within(*BATCH, default=64,
                             help="samples per optimizer step; under torchrun the global batch, split across the ranks")
    optimizer: Literal["sgd", "adamw"] = setting(
        "sgd", help='"sgd": SGD with Nesterov momentum (plain SGD at momentum 0); "adamw": AdamW')
    learning_rate: float = within(0, 10, default=0.05, low_open=True,
                                  help="the peak learning rate, which warmup and the schedule scale")
    momentum: float = within(0, 1, default=0.9, help="SGD's momentum, Nesterov's when above 0; AdamW ignores it")
    weight_decay: float = within(0, 1, default=5e-4, help="the optimizer's weight decay (decoupled in AdamW)")
    schedule: Literal["cosine", "step", "constant"] = setting(
        "cosine", help='the learning rate after warmup: "cosine" decays it to 0 by the last epoch, "step" multiplies '
                       'it by step_gamma every step_epochs epochs, "constant" keeps it')
    warmup_epochs: int = within(0, EPOCHS[1], default=0,
                                help="epochs of linear warmup to learning_rate before the schedule; fewer than epochs")
    step_epochs: int = within(*EPOCHS, default=30,
                              help='schedule "step": epochs between two multiplications by step_gamma')
    step_gamma: float = within(0, 1, default=0.1, low_open=True,
                               help='schedule "step": the factor applied to the learning rate every step_epochs epochs')
    label_smoothing: float = setting(
        0.0, help="label smoothing of the cross-entropy on the labels, in [0, 1): that share of each label's weight "
                  "is spread over all classes")
    augment: Literal["none", "crop_flip"] = setting(
        "none", help='"crop_flip": each training image randomly cropped after zero padding of crop_padding pixels, '
                     'and flipped left-right half the time (models with one image input); "none": images as given')
    crop_padding: int = within(0, 1024, default=4,
                               help='augment "crop_flip": zero padding, in pixels on each side, before the crop')
    # Flips between the top two classes happen between classes, which the blends reach.
    mixup: float = within(0, 1000, default=0.0,
                          help="teacher-matching losses only (distill, qat with alpha = 1): each sample is blended "
                               "with another of its batch, weight drawn from Beta(mixup, mixup), so the student also "
                               "matches the teacher between classes; 0 turns it off")
    validation_split: float = setting(
        0.0, help="share of the training set held out, in [0, 0.5), to score every epoch (accuracy for a classifier, "
                  "else the loss); the best epoch's weights are kept. 0: train on every sample")
    early_stopping_patience: int | None = within(
        *EPOCHS, default=None, help="stop after this many epochs without a better validation score (needs "
                                    "validation_split); unset: run every epoch")
    precision: Literal["fp32", "bf16"] = setting(
        "fp32", help='"bf16": bf16 autocast where the CPU or GPU has native bf16 (elsewhere fp32, with a warning; '
                     'emulated it is many times slower); "fp32": float32 throughout')
    device: Literal["auto", "cpu", "cuda"] = setting("auto",
                                                      help='where to train; "auto": CUDA when available, else CPU')
    seed: int = within(*SEEDS, default=0,
                       help="seeds torch, the validation split, every epoch's batch order and augmentation: "
                            "the same seed trains the same")
    # A short run from scratch leaves BatchNorm statistics partly at their initial values (torchvision's
    # MobileNetV3 moves them 1 % a step), and in eval mode a deep net then gives nearly the same logits for
    # every image.
    batchnorm_recalibration: int = within(
        0, SAMPLES[1], default=0,
        help="after training, every BatchNorm's running statistics recomputed as the plain average over this many "
             "training samples; worth it after a short run from scratch. 0: keep the running averages training left")

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation_split < 0.5:
            raise ValueError("validation_split must be in [0, 0.5)")
        if self.early_stopping_patience is not None and self.validation_split == 0.0:
            raise ValueError("early_stopping_patience needs a validation_split")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError("label_smoothing must be in [0, 1)")
        if self.mixup < 0:
            raise ValueError("mixup must be >= 0 (0 turns it off)")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ValueError("warmup_epochs must be in [0, epochs)")


# loss(model, inputs, labels) -> scalar tensor
LossFn = Callable[[Any, Any, Any], Any]


def resume_key(*, source_sha256: str, settings: Any) -> str:
    from edgepress.stages.code_version import code_version  # an epoch checkpoint of other code is not resumed from either

    text = json.dumps({"source": source_sha256, "settings": asdict(settings), "code": code_version()},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _device(kind: str):
    import torch

    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        # Under torchrun each process drives the GPU torchrun gave it.
        return torch.device("cuda", distributed.local_rank()) if distributed.is_distributed() else torch.device("cuda")
    return torch.device("cpu")


def _bf16_is_fast(device, log: Callable[[str], None]) -> bool:
    """bf16 autocast only where the hardware has it: emulated on AVX2 it was 20x slower than fp32."""
    import torch

    from edgepress.core.progress import say

    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        supported = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not supported:
        message = f"precision bf16 requested, but this {device.type} has no native bf16; training in fp32"
        log(message)
        if distributed.is_main():
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


def _augment(batch, *, padding: int, generator, share: slice = slice(None), global_count: int | None = None):
    """Random crop after zero padding, and horizontal flip, per sample.

    Under data parallelism `batch` is this rank's `share` of a global batch of `global_count`: the draws
    cover the whole global batch, so every rank's generator stays in step and each sample gets the
    crop and flip it would get in a single-process run.
    """
    import torch

    n, _, height, width = batch.shape
    drawn = n if global_count is None else global_count
    padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))
    offsets = torch.randint(0, 2 * padding + 1, (drawn, 2), generator=generator)[share]
    flips = (torch.rand(drawn, generator=generator) < 0.5)[share]
    out = torch.empty_like(batch)
    for i in range(n):
        top, left = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, top:top + height, left:left + width]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


def _mix(batch, *, alpha: float, generator):
    """Blend each sample with another of the batch, weight drawn from Beta(alpha, alpha)."""
    import numpy as np
    import torch

    n = batch.shape[0]
    # torch's Beta takes no generator; a NumPy one seeded from it keeps runs and ranks reproducible.
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    weight = torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).to(batch.dtype)
    weight = weight.reshape((n,) + (1,) * (batch.dim() - 1))
    partner = torch.randperm(n, generator=generator)
    return weight * batch + (1 - weight) * batch[partner]


def fit(model, *, inputs, labels, settings: LoopSettings, loss_fn: LossFn, resume_dir: Path | None,
        key: str, log: Callable[[str], None], label: str = "train",
        extra_modules: torch.nn.Module | None = None) -> list[dict[str, float]]:
    """Train `model` in place; returns per-epoch history. Resumes from `resume_dir` when its key matches.

    `extra_modules` trains alongside `model` without being part of it, e.g. the
    distillation hint adapters: its parameters join the optimizer and its state the resume checkpoint.

    Under `torchrun --nproc_per_node N` (WORLD_SIZE > 1) it runs data-parallel: `settings.batch_size`
    stays the global batch, each rank trains on its share of it, and only rank 0 logs and writes the
    checkpoint. Every rank ends with the same weights.
    """
    import torch

    from edgepress.core.atomic import atomic_path

    distributed.init()  # joins torchrun's process group unless the caller did; a no-op in a single process
    world, rank = distributed.world_size(), distributed.rank()
    main = rank == 0
    if not main:
        log = _quiet
    torch.manual_seed(settings.seed)
    device = _device(settings.device)
    model.to(device)
    if extra_modules is not None:
        extra_modules.to(device).train()
    count = _count(inputs)
    classes = _is_classification(model, inputs, labels)  # else accuracy means nothing: the loss is what is tracked
    if not isinstance(inputs, torch.Tensor) and (settings.augment != "none" or settings.mixup > 0):
        raise UserError(f"{label}: augment and mixup work on one image input, and this model takes "
                        f"{len(inputs)} inputs", fix='set augment = "none" and mixup = 0 in this stage')
    order = torch.randperm(count, generator=torch.Generator().manual_seed(settings.seed))
    n_val = int(count * settings.validation_split)
    train_idx, val_idx = order[n_val:], order[:n_val]
    # A last global batch smaller than the number of ranks would leave a rank with nothing to
    # train on (and nothing for DDP to reduce), so it is dropped, on every rank alike.
    tail = len(train_idx) % settings.batch_size
    trained = len(train_idx) - (tail if 0 < tail < world else 0)
    if trained < len(train_idx):
        log(f"{label}: the last {tail} samples of each epoch are skipped: fewer than the {world} ranks")
    if trained == 0:
        raise UserError(f"{label}: {count} samples leave none to train on (validation_split "
                        f"{settings.validation_split:g} holds out {n_val})",
                        fix="give [data.training] more samples, or lower validation_split")
    if classes:
        _check_labels(model, inputs, labels, device=device, label=label)
    steps_per_epoch = math.ceil(trained / settings.batch_size)
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
        try:
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, training starts afresh
            saved = {}
            log(f"ignoring {checkpoint}: unreadable ({type(exc).__name__})")
        if not isinstance(saved, dict):
            saved = {}
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
        elif saved:
            log(f"ignoring {checkpoint}: it belongs to other settings, another input or other code")

    net = model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        distributed.broadcast_state(model)
        if extra_modules is not None:
            distributed.broadcast_state(extra_modules)
        # SyncBatchNorm would make BatchNorm see the global batch, but in torch 2.13 it raises on CPU
        # tensors ("expected input tensor to be on GPU"), so each rank normalises with its own share's
        # statistics, as the usual per-GPU BatchNorm does; the buffers are reconciled once per epoch
        # (sync_buffers) instead of being overwritten with rank 0's at every step.
        # The flag's name since torch 2.13; older torch (the project allows >= 2.4) calls it broadcast_buffers.
        no_buffer_sync = ("forward_sync_buffers" if "forward_sync_buffers" in
                          inspect.signature(DistributedDataParallel).parameters else "broadcast_buffers")
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      **{no_buffer_sync: False})
    extra_parameters = list(extra_modules.parameters()) if extra_modules is not None else []

    autocast = settings.precision == "bf16" and _bf16_is_fast(device, log)
    progress = Progress(label, total=settings.epochs) if main else None
    for epoch in range(start_epoch, settings.epochs):
        model.train()
        # Seeded per epoch, so a resumed run sees exactly the batches an uninterrupted one would.
        generator = torch.Generator().manual_seed(settings.seed * 1000 + epoch)
        shuffled = train_idx[torch.randperm(len(train_idx), generator=generator)]
        total_loss, correct, seen = 0.0, 0, 0
        for start in range(0, trained, settings.batch_size):
            index = shuffled[start:start + settings.batch_size]
            # Each rank takes its share of the same seeded global batch, so the ranks' shares together are
            # exactly the single-process batch. Not DistributedSampler: it shards the whole epoch and pads
            # it with repeated samples to equal lengths, which changes the batches and the gradient.
            share = distributed.shard(len(index), rank=rank, world=world)
            mine = index[share]
            # With mixup a sample's partner may sit in another rank's share: every rank then builds the whole
            # global batch (cheap beside the forward pass) and keeps its share of the blend.
            whole = settings.mixup > 0
            batch = _take(inputs, index if whole else mine)
            if settings.augment == "crop_flip":
                batch = _augment(batch, padding=settings.crop_padding, generator=generator,
                                 share=slice(None) if whole else share, global_count=len(index))
            if whole:
                batch = _mix(batch, alpha=settings.mixup, generator=generator)[share]
            batch, target = _to(batch, device), _to(_take(labels, mine), device)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
                loss, logits = loss_fn(net, batch, target)
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the ranks' gradients; weighting each rank's mean loss by its share of the
            # global batch makes that average the global-batch mean even when the shares are uneven.
            (loss * (len(mine) * world / len(index)) if world > 1 else loss).backward()
            distributed.average_gradients(extra_parameters)  # DDP reduces only the wrapped model's
            optimizer.step()
            scheduler.step()
            total_loss += loss.item() * len(mine)
            if classes:
                correct += int((logits.argmax(1) == target).sum())
            seen += len(mine)
        distributed.sync_buffers(model)
        total_loss, correct, seen = distributed.sum_across([total_loss, correct, seen], device=device)
        record = {"epoch": epoch + 1, "loss": total_loss / seen, "learning_rate": scheduler.get_last_lr()[0]}
        if classes:
            record["train_accuracy"] = correct / seen
        if n_val:
            # Every rank scores its share and the counts are summed, so every rank gets the same
            # accuracy and takes the same early-stopping decision.
            mine = val_idx[distributed.shard(n_val, rank=rank, world=world)]
            if classes:
                hits = _count_correct(model, inputs[mine], labels[mine], device=device)
                record["val_accuracy"] = distributed.sum_across([hits], device=device)[0] / n_val
                score = record["val_accuracy"]
            else:  # the summed loss over the held-out samples: lower is better
                summed = _summed_loss(model, _take(inputs, mine), _take(labels, mine), loss_fn=loss_fn, device=device)
                record["val_loss"] = distributed.sum_across([summed], device=device)[0] / n_val
                score = -record["val_loss"]
            if best_state is None or score > best_val:
                best_val, stale = score, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        history.append(record)
        log(f"{label} epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in record.items() if k != "epoch"))
        if progress is not None:
            progress.update(epoch + 1, note=f"loss {record['loss']:.3f}"
                            + (f" acc {record['train_accuracy']:.3f}" if classes else "")
                            + (f" val {record.get('val_accuracy', record.get('val_loss', 0)):.3f}" if n_val else ""))
        stop = settings.early_stopping_patience is not None and stale >= settings.early_stopping_patience
        if checkpoint is not None and main:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            state = {"key": key, "epoch": epoch + 1, "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "best_val": best_val,
                     "best_state": best_state, "stale": stale, "history": history, "rng": torch.get_rng_state()}
            if extra_modules is not None:
                state["extra"] = {k: v.detach().cpu() for k, v in extra_modules.state_dict().items()}
            with atomic_path(checkpoint) as tmp:
                torch.save(state, tmp)
        if checkpoint is not None:
            distributed.barrier()  # no rank runs ahead of the checkpoint it would resume from
        if stop:
            log(f"early stopping after epoch {epoch + 1}: no better validation {'accuracy' if classes else 'loss'} "
                f"for {stale} epochs")
            break
    del net  # the DDP wrapper and its gradient hooks end here; the caller keeps the plain module
    if best_state is not None:
        model.load_state_dict(best_state)
    if settings.batchnorm_recalibration:
        layers, samples = recalibrate_batchnorm(model, inputs, samples=settings.batchnorm_recalibration,
                                                batch_size=settings.batch_size, seed=settings.seed, device=device)
        log(f"{label}: running statistics of {layers} BatchNorm layers recomputed on {samples} training samples")
    model.to("cpu").eval()
    return history


def _count(inputs) -> int:
    return len(inputs) if not isinstance(inputs, dict) else len(next(iter(inputs.values())))


def _take(data, index):
    """Samples `index` of a tensor, or of each tensor of a dict (several inputs, several targets)."""
    return {k: v[index] for k, v in data.items()} if isinstance(data, dict) else data[index]


def _to(data, device):
    return {k: v.to(device) for k, v in data.items()} if isinstance(data, dict) else data.to(device)


def call(net, batch):
    """The model on a batch: one tensor, or a dict of its inputs in its order."""
    return net(*batch.values()) if isinstance(batch, dict) else net(batch)


def _is_classification(model, inputs, labels) -> bool:
    """Integer labels, one per sample, and a model answering N x K scores: accuracy and label checks apply."""
    import torch

    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.dtype.is_floating_point:
        return False
    was_training = model.training
    model.eval()
    with torch.no_grad():
        out = call(model, _take(inputs, slice(0, 1)))
    model.train(was_training)
    return isinstance(out, torch.Tensor) and out.dim() == 2


def _summed_loss(model, inputs, labels, *, loss_fn, device, batch_size: int = 256) -> float:
    import torch

    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, _count(inputs), batch_size):
            part = slice(start, start + batch_size)
            loss, _ = loss_fn(model, _to(_take(inputs, part), device), _to(_take(labels, part), device))
            total += float(loss) * _count(_take(inputs, part))
    model.train()
    return total


def recalibrate_batchnorm(model, inputs, *, samples: int, batch_size: int, seed: int, device) -> tuple[int, int]:
    """(BatchNorm layers, samples used): running mean and variance replaced by their plain average over a
    seeded choice of `samples` inputs (class-sorted sets are common), un-augmented, in training mode."""
    import torch

    norms = [m for m in model.modules()
             if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return 0, 0
    chosen = torch.randperm(_count(inputs), generator=torch.Generator().manual_seed(seed))[:samples]
    momenta = [m.momentum for m in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None: a cumulative average over every batch seen, not an exponential one
    model.train()
    used = 0
    with torch.no_grad():
        for start in range(0, len(chosen), batch_size):
            index = chosen[start:start + batch_size]
            if len(index) < 2:  # one sample has no batch variance (BatchNorm raises on a 1 x 1 map)
                break
            call(model, _to(_take(inputs, index), device))
            used += len(index)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum
    return len(norms), used


def _check_labels(model, inputs, labels, *, device, label: str) -> None:
    """Labels the model cannot score, as one line: torch's cross-entropy raises IndexError mid-epoch for them
    (and a device-side assert on CUDA). One sample through the model gives its class count."""
    import torch

    was_training = model.training
    model.eval()  # one sample through BatchNorm in training mode is an error of its own
    with torch.no_grad():
        scores = model(inputs[:1].to(device))
    model.train(was_training)
    classes = scores.shape[-1]
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise UserError(f"{label}: the training labels span {low}..{high}, but the model scores {classes} classes "
                        f"(0..{classes - 1})", fix=f"use training data labelled 0..{classes - 1}, or build the "
                        "model with as many classes as the labels need ([model] kwargs)")


def _quiet(message: str) -> None:
    """The log of ranks other than 0: rank 0 speaks for all of them."""


def evaluate(model, inputs, labels, *, device, batch_size: int = 256) -> float:
    return _count_correct(model, inputs, labels, device=device, batch_size=batch_size) / max(1, len(inputs))


def _count_correct(model, inputs, labels, *, device, batch_size: int = 256) -> int:
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(inputs), batch_size):
            logits = model(inputs[start:start + batch_size].to(device))
            correct += int((logits.argmax(1).cpu() == labels[start:start + batch_size]).sum())
    model.train()
    return correct
