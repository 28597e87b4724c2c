"""`qat`: quantization-aware training, torch in, QDQ ONNX out that ONNX Runtime runs with integer kernels.

Batch norm is folded, fake quantization sits where ONNX Runtime's fusions put integer kernels
(qat_graph.py), ranges start from calibration and are then learned, and the model is fine-tuned
by distillation from its own FP32 self (or a named stage). The export is checked twice: no float
convolution or matmul is left after ONNX Runtime's optimisation, and the torch model, run with
ONNX Runtime's integer arithmetic, agrees with the ONNX model on `min_parity` of predictions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgepress.compress.distill import check_distillation
from edgepress.compress.training.loop import LoopSettings, fit, resume_key
from edgepress.compress.train import check_loss
from edgepress.core.errors import UserError
from edgepress.core.schema import SAMPLES, bounded, setting, within
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput


@dataclass(frozen=True)
@bounded
class QatSettings(LoopSettings):
    # Fine-tuning a converged model: a short, gentle schedule. AdamW at 2e-5: on ResNet-56, SGD at 1e-4 with the
    # logit loss diverged in the first epoch, and on ResNet-20 AdamW agreed more (bench/RESULTS.md).
    epochs: int = setting(1, help="passes over the training set; short, as qat fine-tunes a converged model")
    optimizer: Literal["sgd", "adamw"] = setting(
        "adamw", help='"adamw": AdamW; "sgd": SGD with Nesterov momentum (on ResNet-56, SGD at 1e-4 diverged in '
                      "the first epoch)")
    learning_rate: float = setting(2e-5, help="the peak learning rate: small, to fine-tune without undoing training")
    weight_decay: float = setting(0.0, help="the optimizer's weight decay; 0 by default, since decay would also "
                                            "shrink the learned quantization scales")
    teacher: str = setting("input", help="the model the quantized one learns from: \"input\", this stage's own "
                                         "FP32 input; else a finished torch stage's name")
    # A flip needs only a small change in the gap between the top two logits, which KL at T = 1 barely weighs once
    # the top class is confident.
    loss: Literal["kl", "logits_mse"] = setting(
        "logits_mse", help='how a classifier matches its teacher: "logits_mse", the squared error of the logits '
                           'themselves; "kl", the KL divergence of their softmax at temperature')
    alpha: float = setting(1.0, help="weight of the teacher term, in [0, 1]; 1 - alpha goes to the task's loss on the "
                                     "labels (cross-entropy for a classifier)")
    temperature: float = within(0, 1000, default=1.0, low_open=True,
                                help='loss "kl": the softmax temperature T (the term is scaled by T^2)')
    weight_bits: Literal["auto", "7", "8"] = setting(
        "auto", help='"7": 7-bit weights, for a target whose U8S8 kernels add products in int16 (x86 without VNNI), '
                     'where 8-bit weights can saturate; "8": 8-bit weights; "auto": 7 where the CPU running the stage '
                     "adds them in int16, else 8")
    calibration_method: Literal["minmax", "percentile"] = setting(
        "percentile", help='how the activation ranges that training starts from are set: "percentile" clips the '
                           'calibration values at percentile, "minmax" spans all of them')
    percentile: float = setting(99.999, help='calibration_method "percentile": the percentile, in (90, 100], at '
                                             "which each activation's range clips its values on either side")
    calibration_samples: int = within(*SAMPLES, default=512,
                                      help="calibration samples that set the initial activation ranges")
    learn_ranges: bool = setting(True, help="the activation ranges (quantization scales) are trained with the "
                                            "weights; false: they stay as calibrated")
    fp32_layers: tuple[str, ...] = setting(
        (), help="Conv/Linear layers (torch module names) left in FP32, e.g. the first conv, whose input is the "
                 "normalised image: cheap to run in FP32, and one uint8 grid loses pixel levels of its three channels")
    parity_samples: int = within(*SAMPLES, default=1000,
                                 help="samples of the first evaluation set on which the ONNX model is checked against "
                                      "the torch QAT model, and teacher agreement is measured before and after")
    min_parity: float = setting(0.995, help="the least share, in (0, 1], of parity_samples on which ONNX Runtime's "
                                            "integer model agrees with the torch QAT model (top-1 class, or the "
                                            "worst output's cosine); below it the stage fails")
    opset: int = setting(17, help="the ONNX opset of the export (TorchScript exporter)")
    choose_conv_kernels: bool = setting(
        False, help="the exported convs steered to their fastest INT8 kernels, timed here, bit-exact (as ptq's "
                    "choose_conv_kernels); only where the recipe's first target is this machine")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distillation(alpha=self.alpha, temperature=self.temperature, mixup=self.mixup)
        if not 90.0 < self.percentile <= 100.0:
            raise ValueError(f"percentile must be in (90, 100], got {self.percentile}")
        if not 0.0 < self.min_parity <= 1.0:
            raise ValueError("min_parity is a share in (0, 1]")


def weight_qmax(settings: QatSettings, log) -> int:
    from edgepress.runtime.isa import local_isa

    if settings.weight_bits == "auto":
        isa = local_isa()
        bits = 7 if isa.u8s8_saturates else 8
        log(f"weight_bits auto: {bits} on {isa.describe()}" + (" (U8S8 kernels add products in int16)" if bits == 7 else ""))
    else:
        bits = int(settings.weight_bits)
    return 64 if bits == 7 else 127


def _predict(module, inputs: np.ndarray, batch: int = 200) -> dict[str, np.ndarray]:
    """Every output by name (edgepress/io/torch_outputs.py), batch by batch."""
    from edgepress.io.torch_outputs import forward

    chunks = [forward(module, {"input": inputs[i:i + batch]}) for i in range(0, len(inputs), batch)]
    return {name: np.concatenate([c[name] for c in chunks]) for name in chunks[0]}


def _agreement(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray], task) -> float:
    """A classifier's share of equal top-1 classes; any other model's worst-output mean cosine."""
    from edgepress.measure import metrics
    from edgepress.measure.task import Task

    return (task or Task(metric=metrics.METRICS["top1"])).same_answers(ours, theirs)


def train(*, model, teacher, calibration: np.ndarray, train_inputs: np.ndarray, train_labels,
          check_inputs: np.ndarray, settings: QatSettings, log, resume_dir=None, key: str = "", task=None):
    """Fold, place fake quantization, calibrate, fine-tune from `teacher`; returns (QatGraph, metrics)."""
    import torch

    from edgepress.compress.distill import teacher_loss_fn
    from edgepress.compress.quant.qat_graph import QatGraph

    graph = QatGraph(model, weight_qmax=weight_qmax(settings, log), float_layers=settings.fp32_layers)
    if not np.all(np.isfinite(calibration)):
        raise UserError("the calibration data contains NaN or infinite values", fix="clean the calibration data or its preprocessing")
    torch.manual_seed(settings.seed)  # the observers subsample
    graph.calibrate(torch.from_numpy(calibration[: settings.calibration_samples]), method=settings.calibration_method,
                    percentile=settings.percentile)
    log(f"{len(graph.quantizers)} activation quantizers, ranges from {settings.calibration_method} calibration")
    for quantizer in graph.quantizers:
        quantizer.scale.requires_grad_(settings.learn_ranges)
    reference = _predict(teacher, check_inputs)
    graph.set_mode("exact")
    before = _agreement(_predict(graph.module.eval(), check_inputs), reference, task)
    log(f"before training: INT8 agrees with the teacher on {100 * before:.2f}% of {len(check_inputs)} check inputs")
    graph.set_mode("quantize")
    classifier = not isinstance(train_labels, dict) and (task is None or task.metric.key == "top1") and len(reference) == 1
    if classifier:
        loss_fn = teacher_loss_fn(teacher, alpha=settings.alpha, temperature=settings.temperature,
                                  label_smoothing=settings.label_smoothing, match=settings.loss)
    else:
        from edgepress.compress.distill import outputs_loss_fn

        loss_fn = outputs_loss_fn(teacher, task=task, alpha=settings.alpha, temperature=settings.temperature,
                                  label_smoothing=settings.label_smoothing)
    labels = {k: torch.from_numpy(v) for k, v in train_labels.items()} if isinstance(train_labels, dict) else \
        torch.from_numpy(train_labels)
    history = fit(graph.module, inputs=torch.from_numpy(train_inputs), labels=labels,
                  settings=settings, loss_fn=loss_fn, resume_dir=resume_dir, key=key, log=log, label="qat")
    graph.module.cpu().eval()
    graph.set_mode("exact")
    after = _agreement(_predict(graph.module, check_inputs), reference, task)
    log(f"after training: INT8 agrees with the teacher on {100 * after:.2f}%")
    return graph, {"weight_bits": 7 if graph.weight_qmax == 64 else 8, "activation_quantizers": len(graph.quantizers),
                   "loss": settings.loss,
                   "samples": int(len(train_inputs)), "epochs_run": len(history), "history": history,
                   "teacher_agreement_before": before, "teacher_agreement_after": after}


def export(*, graph, input_shape: tuple[int, ...], out, parity_inputs: np.ndarray, settings: QatSettings, log,
           task=None) -> dict:
    """QDQ ONNX with int8 weights; fails unless ONNX Runtime runs it on integer kernels and agrees with torch."""
    from edgepress.compress.quant.qat_export import check_integer_kernels, int8_weights
    from edgepress.export.export import ExportSettings, export_onnx
    from edgepress.runtime.session import open_session, run_all

    graph.set_mode("quantize")
    fake_logits = _predict(graph.module, parity_inputs)
    graph.set_mode("exact")
    exact_logits = _predict(graph.module, parity_inputs)
    frozen, weights = graph.frozen_copy()
    # The dynamo exporter cannot trace fake quantization with a dynamic batch (torch 2.13).
    export_onnx(model=frozen, input_shape=input_shape, path=out,
                settings=ExportSettings(exporter="torchscript", opset=settings.opset), log=log)
    swapped = int8_weights(out, weights)
    kernels = check_integer_kernels(out, allowed_float=len(settings.fp32_layers))
    log(f"ONNX Runtime runs {kernels['integer_compute_nodes']} integer and {kernels['float_compute_nodes']} float "
        f"compute nodes: {kernels['op_counts']}")
    session = open_session(out, threads=1)
    ort_logits = run_all(session, {session.get_inputs()[0].name: parity_inputs}, batch_size=200)
    ort_logits = dict(zip(exact_logits, ort_logits.values()))  # the export names the outputs as torch does
    parity = _agreement(ort_logits, exact_logits, task)
    fake_parity = _agreement(ort_logits, fake_logits, task)
    max_abs_diff = max(float(np.max(np.abs(ort_logits[k] - exact_logits[k]), initial=0.0)) for k in exact_logits)
    log(f"torch QAT vs ONNX Runtime INT8 on {len(parity_inputs)} inputs: top-1 agreement {parity:.4f} "
        f"(integer arithmetic), {fake_parity:.4f} (training's fake quantization); max |diff| {max_abs_diff:.3g}")
    if parity < settings.min_parity:
        raise UserError(f"the ONNX model agrees with the torch QAT model on only {100 * parity:.2f}% "
                        f"(top-1 predictions, or the worst output's cosine; minimum {100 * settings.min_parity:.2f}%)",
                        fix="report this model: its quantization placement does not match ONNX Runtime's kernels")
    return {"int8_weights": swapped, "onnxruntime_kernels": kernels,
            "parity": {"samples": int(len(parity_inputs)), "top1_agreement": parity,
                       "top1_agreement_fake_quant": fake_parity, "max_abs_diff": max_abs_diff}}


def run(source: Artifact, settings: QatSettings, ctx: StageContext) -> StageOutput:
    from edgepress.io import torch_artifact
    from edgepress.compress.ptq import conv_kernels_on_target
    from edgepress.compress.quant.static import node_precision_map

    model, input_shape, _ = torch_artifact.load(source.path)
    if settings.teacher == "input":
        teacher, _, _ = torch_artifact.load(source.path)
    else:
        teacher_artifact = ctx.artifacts.get(settings.teacher)
        if teacher_artifact is None or teacher_artifact.format != "torch":
            done = ["input"] + [name for name, a in ctx.artifacts.items() if a.format == "torch"]
            raise UserError(f"teacher {settings.teacher!r} is not a finished torch stage before this one",
                            fix=f"set teacher to one of {', '.join(done)}")
        teacher, _, _ = torch_artifact.load(teacher_artifact.path)
    parity_set = ctx.data.evaluation[0]
    for role, samples in (("evaluation", parity_set), ("calibration", ctx.data.calibration), ("training", ctx.data.training)):
        if len(samples.feeds) != 1:
            raise UserError(f"qat traces one-input models, and the {role} set {samples.name!r} feeds "
                            f"{len(samples.feeds)} inputs", fix="use ptq (or accuracy_aware_ptq) for this model")
    only = lambda samples: next(iter(samples.feeds.values()))  # noqa: E731
    targets = ctx.data.training.targets or {}
    train_labels = targets["labels"] if list(targets) == ["labels"] else targets
    parity_inputs = only(parity_set)[: settings.parity_samples]
    ctx.log(f"calibration: {ctx.data.calibration.name}; training: {ctx.data.training.name}; checks on {parity_set.name}")
    graph, trained = train(model=model, teacher=teacher, calibration=only(ctx.data.calibration),
                           train_inputs=only(ctx.data.training), train_labels=train_labels,
                           check_inputs=parity_inputs, settings=settings, log=ctx.log, resume_dir=ctx.resume_dir,
                           key=resume_key(source_sha256=ctx.source_sha256, settings=settings), task=ctx.task)
    out = ctx.output_path("onnx")
    exported = export(graph=graph, input_shape=input_shape, out=out, parity_inputs=parity_inputs, settings=settings,
                      log=ctx.log, task=ctx.task)
    exported["parity"]["set"] = parity_set.name
    if settings.choose_conv_kernels:
        exported["conv_kernels"] = conv_kernels_on_target(out, ctx, ctx.data.calibration.feeds)
    precision = node_precision_map(out)
    return StageOutput(artifact=Artifact(path=out, format="onnx"), metrics={
        "quantization": {"scheme": "u8s8", "method": "qat", "node_precision": precision,
                         "fp32_fallback": [{"node": node, "reason": f"fp32_layers = {list(settings.fp32_layers)}"}
                                           for node, kind in precision.items() if kind == "fp32"],
                         "int8_nodes": sum(p == "int8" for p in precision.values()),
                         "float_nodes": sum(p == "fp32" for p in precision.values())},
        "qat": {**trained, **exported}})


def check_names(settings: QatSettings, model) -> None:
    from edgepress.core.layer_names import require_layers
    from torch import nn

    compute = [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]
    require_layers(model, settings.fp32_layers, setting="fp32_layers", candidates=compute)


STAGE = StageDef(kind="qat", settings_type=QatSettings, input_format="torch", output_format="onnx", run=run,
                 timed=lambda s: s.choose_conv_kernels, reads_targets=lambda s: s.choose_conv_kernels,
                 needs=("calibration", "training"), check_names=check_names,
                 check_task=lambda settings, task: check_loss(task, user_loss=None, needed=settings.alpha < 1.0),
                 summary="quantization-aware training distilled from FP32, exported as QDQ ONNX on ONNX Runtime's integer kernels")
