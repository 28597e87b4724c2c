"""`prune`: structural channel pruning with torch-pruning; channels are removed, not masked.

Separated as Torch-Pruning does: what is coupled (torch-pruning's dependency graph, plus the
layers a model declares unprunable), how channels are scored (`importance`), and when they
are cut (a fixed `channel_ratio`, or the ratio found by bisection for a `macs_target`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgepress.compress.pruning.channels import prune_copy
from edgepress.compress.pruning.settings import PruneSettings
from edgepress.core.errors import UserError
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput


def prune_to_macs(model, *, input_shape: tuple[int, ...], settings: PruneSettings, calibration=None):
    """(pruned copy, ratio): the smallest ratio whose MACs are at most settings.macs_target of the model's."""
    from edgepress.io import torch_artifact
    from edgepress.compress.pruning.prune_search import Targets, search_ratio

    import torch

    example = torch.zeros(1, *input_shape)
    pruned, ratio, _ = search_ratio(
        cut=lambda r: prune_copy(model, example=example, ratio=r, settings=settings, calibration=calibration),
        count_macs=lambda m: torch_artifact.count_macs(m, input_shape),
        targets=Targets(macs_limit=settings.macs_target * torch_artifact.count_macs(model, input_shape)),
        probe=None, log=lambda _: None)
    return pruned, ratio


def run(source: Artifact, settings: PruneSettings, ctx: StageContext) -> StageOutput:
    import torch

    from edgepress.io import torch_artifact
    from edgepress.compress.pruning.prune_search import Targets, open_probe, scratch_dir, search_ratio

    from edgepress.compress.training import distributed

    if distributed.is_distributed() and settings.steps > 1 and settings.step_epochs > 0:
        # The other ranks do not run this stage (its search measures latency on one process), so
        # its fine-tuning between steps cannot be data-parallel.
        raise UserError("prune with steps > 1 fine-tunes between steps in one process, not under torchrun",
                        fix="run this recipe without torchrun, or set step_epochs = 0 and add a distill stage")
    model, input_shape, builder = torch_artifact.load(source.path)
    inputs_spec = builder.get("inputs")  # a model with several inputs records them (pipeline.build_source)
    _check_task(settings, ctx, several_inputs=bool(inputs_spec and len(inputs_spec) > 1))
    example = (tuple(torch.zeros(1, *shape, dtype=getattr(torch, dtype)) for shape, dtype in inputs_spec.values())
               if inputs_spec and len(inputs_spec) > 1 else torch.zeros(1, *input_shape))
    calibration = None
    if settings.importance == "taylor":
        labeled = ctx.data.training if ctx.data.spec.training is not None else ctx.data.calibration
        calibration = (torch.from_numpy(labeled.inputs[:settings.taylor_samples]),
                       torch.from_numpy(labeled.labels[:settings.taylor_samples]))
    macs_before = torch_artifact.count_macs(model, input_shape, inputs=inputs_spec)
    params_before = torch_artifact.count_params(model)
    macs_reference = macs_before
    if settings.macs_reference == "source" and "model" in ctx.artifacts and ctx.artifacts["model"].format == "torch":
        macs_reference = torch_artifact.count_macs(torch_artifact.load(ctx.artifacts["model"].path)[0], input_shape)
    count = lambda m: torch_artifact.count_macs(m, input_shape, inputs=inputs_spec)  # noqa: E731
    steps: list[dict[str, Any]] = []
    tables: list[dict[str, Any]] = []
    current = model
    if settings.sensitivity == "report":
        tables.append(_sensitivity(model, settings=settings, input_shape=input_shape, calibration=calibration, ctx=ctx)
                      .to_json())
    with scratch_dir() as scratch:
        probe = (open_probe(model, input_shape=input_shape, threads=ctx.threads, scratch=Path(scratch))
                 if settings.measures_latency else None)
        final_share = None if settings.macs_target is None else settings.macs_target * macs_reference / macs_before
        if final_share is None and settings.channel_ratio is None and settings.steps > 1:
            final_share = _latency_macs_share(model, settings=settings, example=example, count=count, probe=probe,
                                              ctx=ctx, calibration=calibration)
        for step in range(1, settings.steps + 1):
            last = step == settings.steps
            # Each step removes an equal share of what the final target removes (of channels, or of MACs).
            if settings.channel_ratio is not None:
                ratio = 1.0 - (1.0 - settings.channel_ratio) ** (1.0 / settings.steps)
                pruned = prune_copy(current, example=example, ratio=ratio, settings=settings, calibration=calibration)
                trials: list[dict[str, Any]] = []
            else:
                cut, table = _cutter(current, settings=settings, input_shape=input_shape, calibration=calibration, ctx=ctx)
                if table is not None:
                    tables.append(table)
                share = None if final_share is None else 1.0 - (1.0 - final_share) * step / settings.steps
                if last and settings.macs_target is None:
                    share = None  # the measured latency alone decides the last step
                targets = Targets(macs_limit=None if share is None else share * macs_before,
                                  latency_ratio=settings.latency_ratio if last else None,
                                  latency_ms=settings.latency_target_ms if last else None)
                pruned, ratio, trials = search_ratio(cut=cut, count_macs=count, targets=targets, probe=probe, log=ctx.log)
            record = {"step": step, "ratio": round(ratio, 4), "macs_kept": count(pruned) / macs_before, "trials": trials}
            if not last and settings.step_epochs > 0:
                record["fine_tune"] = _fine_tune(pruned, teacher=model, settings=settings, ctx=ctx, step=step)
            steps.append(record)
            ctx.log(f"step {step}/{settings.steps}: ratio {ratio:.4f}, MACs kept {record['macs_kept']:.4f}")
            current = pruned
    macs_after, params_after = count(current), torch_artifact.count_params(current)
    ctx.log(f"MACs {macs_before} -> {macs_after}, params {params_before} -> {params_after}")
    out = ctx.output_path("torch")
    torch_artifact.save(out, model=current, builder=builder, input_shape=input_shape)
    kept = {name: int(m.out_channels) for name, m in current.named_modules() if isinstance(m, torch.nn.Conv2d)}
    summary: dict[str, Any] = {"importance": settings.importance, "channel_ratio": steps[-1]["ratio"],
                               "macs_before": macs_before, "macs_after": macs_after, "macs_kept": macs_after / macs_before,
                               "macs_kept_of_reference": macs_after / macs_reference,
                               "params_before": params_before, "params_after": params_after, "steps": steps,
                               "conv_out_channels": kept}
    last_trials = [t for t in steps[-1]["trials"] if "p50_ratio" in t and t["meets"]]
    if last_trials:
        summary["measured_p50_ratio"] = last_trials[-1]["p50_ratio"]
    metrics: dict[str, Any] = {"pruning": summary}
    if tables:
        metrics["sensitivity"] = tables[0]  # of the input model: the one the report plots
    return StageOutput(artifact=Artifact(path=out, format="torch"), metrics=metrics)


def _check_task(settings: PruneSettings, ctx: StageContext, *, several_inputs: bool) -> None:
    """What needs class labels (Taylor importance, accuracy sensitivity) or one image input (latency probes,
    the sensitivity sweep) is refused in one line for other models; magnitude pruning works on any."""
    classifier = ctx.task is None or ctx.task.metric.key == "top1"
    for wanted, needs_labels, what in (
            (settings.importance == "taylor", True, 'importance = "taylor" (a cross-entropy gradient)'),
            (settings.sensitivity != "off", True, f'sensitivity = "{settings.sensitivity}" (accuracy per layer)'),
            (settings.measures_latency, False, "a latency target (timed on one input)")):
        if wanted and ((needs_labels and not classifier) or several_inputs):
            why = "a model with several inputs" if several_inputs else f"data.metric = {ctx.task.metric.key!r}"
            raise UserError(f"prune: {what} works on one-input classifiers, and this recipe has {why}",
                            fix='use importance = "l1" (or "l2", "bn_scale") with channel_ratio or macs_target')


def _sensitivity(model, *, settings: PruneSettings, input_shape, calibration, ctx: StageContext):
    """Accuracy against ratio per layer, on a calibration subset."""
    import torch

    from edgepress.compress.pruning.channels import prunable_layers
    from edgepress.compress.pruning.sensitivity import layer_sensitivity

    labeled = ctx.data.calibration
    inputs = torch.from_numpy(labeled.inputs[:settings.sensitivity_samples])
    labels = torch.from_numpy(labeled.labels[:settings.sensitivity_samples])

    def accuracy(candidate) -> float:
        candidate.eval()
        with torch.no_grad():
            return float((candidate(inputs).argmax(1) == labels).float().mean())

    ctx.log(f"sensitivity analysis on {len(inputs)} calibration images, ratios {settings.sensitivity_ratios}")
    return layer_sensitivity(model, input_shape=input_shape,
                             layers=prunable_layers(model, input_shape=input_shape, settings=settings),
                             ratios=settings.sensitivity_ratios, settings=settings, evaluate=accuracy,
                             calibration=calibration)


def _cutter(model, *, settings: PruneSettings, input_shape, calibration, ctx: StageContext):
    """(cut(ratio) -> pruned copy, sensitivity table JSON or None) for the search.

    Uniform: the ratio is every layer's. Allocate: the ratio is the share of MACs to remove,
    spread over layers by a fresh sensitivity analysis of `model` (every step re-measures)."""
    import torch

    from edgepress.compress.pruning.prune_search import Unreachable

    example = torch.zeros(1, *input_shape)
    if settings.sensitivity != "allocate":
        return (lambda r: prune_copy(model, example=example, ratio=r, settings=settings, calibration=calibration)), None
    from edgepress.compress.pruning.sensitivity import prune_to_macs_by_sensitivity

    table = _sensitivity(model, settings=settings, input_shape=input_shape, calibration=calibration, ctx=ctx)

    def cut(ratio: float):
        try:
            pruned, _ = prune_to_macs_by_sensitivity(model, input_shape=input_shape, table=table, macs_target=1.0 - ratio,
                                                     settings=settings, calibration=calibration)
        except UserError as exc:
            raise Unreachable(exc.problem) from None
        return pruned

    return cut, table.to_json()


def _latency_macs_share(model, *, settings, example, count, probe, ctx, calibration) -> float:
    """For an iterative schedule with a latency target: the MAC share at which the unpruned model,
    pruned in one go, meets it; intermediate steps head there, and the last step re-measures."""
    from edgepress.compress.pruning.prune_search import Targets, search_ratio

    ctx.log("finding the MAC share that meets the latency target, to schedule the intermediate steps")
    pruned, _, _ = search_ratio(
        cut=lambda r: prune_copy(model, example=example, ratio=r, settings=settings, calibration=calibration),
        count_macs=count, targets=Targets(latency_ratio=settings.latency_ratio, latency_ms=settings.latency_target_ms),
        probe=probe, log=ctx.log)
    return count(pruned) / count(model)


def _fine_tune(model, *, teacher, settings: PruneSettings, ctx: StageContext, step: int) -> dict[str, Any]:
    """A short distillation from the input model between steps, so the next cut ranks recovered weights."""
    import torch

    from edgepress.compress.distill import teacher_loss_fn
    from edgepress.compress.training.loop import LoopSettings, fit, resume_key

    loop = LoopSettings(epochs=settings.step_epochs, batch_size=settings.step_batch_size,
                        learning_rate=settings.step_learning_rate, augment="crop_flip" if model_is_image(ctx) else "none")
    from edgepress.compress.distill import outputs_loss_fn
    from edgepress.compress.train import training_tensors

    train = ctx.data.training
    inputs, labels = training_tensors(train)
    classifier = isinstance(labels, torch.Tensor) and (ctx.task is None or ctx.task.metric.key == "top1")
    loss_fn = (teacher_loss_fn(teacher, alpha=0.9, temperature=4.0) if classifier else
               outputs_loss_fn(teacher, task=ctx.task, alpha=1.0, temperature=4.0))
    history = fit(model, inputs=inputs, labels=labels, settings=loop,
                  loss_fn=loss_fn, resume_dir=None if ctx.resume_dir is None else ctx.resume_dir / f"step{step}",
                  key=resume_key(source_sha256=ctx.source_sha256, settings=settings) + f"-{step}", log=ctx.log,
                  label=f"prune step {step} fine-tune")
    return {"epochs": len(history), "train_accuracy": history[-1].get("train_accuracy") if history else None}


def model_is_image(ctx: StageContext) -> bool:
    feeds = ctx.data.training.feeds
    shape = next(iter(feeds.values())).shape
    return len(feeds) == 1 and len(shape) == 4 and shape[2] >= 16 and shape[3] >= 16


def check_names(settings: PruneSettings, model) -> None:
    from edgepress.core.layer_names import require_layers

    require_layers(model, settings.ignored_layers, setting="ignored_layers")


STAGE = StageDef(kind="prune", settings_type=PruneSettings, input_format="torch", output_format="torch", run=run,
                 check_names=check_names, timed=lambda settings: settings.measures_latency,
                 summary="structural channel pruning (torch-pruning): channels are removed, not masked; "
                         "ratio, MAC or measured-latency targets; iterative steps with fine-tuning")
