"""`ort_format`: ONNX -> ORT format (.ort), the file ONNX Runtime Mobile and reduced builds load, converted by ONNX
Runtime's own converter, with the required-operators configuration a reduced build takes; the .ort is run beside
its source on every evaluation set and must answer as it does."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgepress.core.errors import UserError
from edgepress.core.progress import tool_output_to
from edgepress.core.schema import setting, within
from edgepress.io.operators import OPERATOR_CONFIG, TYPED_OPERATOR_CONFIG, operators, write_config
from edgepress.stages.stage import Artifact, StageContext, StageDef, StageOutput

__all__ = ["OrtFormatSettings", "STAGE", "convert", "run"]

# The converter reads its level from this variable (its command line has no flag for it).
_LEVEL_VARIABLE = "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"
_BATCH = 64  # evaluation batches: answers do not depend on it
_LEVEL_NAMES = {"none": "disable", "basic": "basic", "extended": "extended", "layout": "layout", "all": "all"}


@dataclass(frozen=True)
class OrtFormatSettings:
    # What the converter bakes in is all the optimisation a reduced build ever gets: it has no optimizer of its own.
    # A QDQ INT8 model needs "extended" or more, which fuses Q/DQ pairs into integer kernels: at "basic" they stay
    # pairs that the CPU runs in float, slower and answering differently.
    optimization_level: Literal["none", "basic", "extended", "layout", "all"] = setting(
        "all", help='graph optimisations baked into the .ort: "all" (the converter\'s default, without the x86-only '
                    'NCHWc layout unless target_platform = "amd64"), "layout", "extended", "basic" (what ONNX Runtime '
                    'advises where NNAPI or CoreML takes the model), or "none"')
    target_platform: Literal["any", "arm", "amd64"] = setting(
        "any", help='the CPU the .ort ships to, as the converter\'s --target_platform: "arm" lets int8 Q/DQ pairs '
                    'fuse as ARM kernels prefer, "amd64" adds the NCHWc layout sized for this machine\'s vector '
                    'width (the file then answers correctly only on x86 CPUs like this one: refused unless every '
                    'target is local), "any" runs everywhere')
    # A fusion baked into the .ort cannot be skipped where it runs (a session does not optimise an .ort again).
    disabled_optimizers: tuple[str, ...] = setting(
        (), help="ONNX Runtime graph transformers not to bake into the .ort, e.g. [\"SkipLayerNormFusion\"] where "
                 "the fused kernel is the slower one (as a target's disabled_optimizers does for an ONNX model)")
    operator_types: bool = setting(
        False, help="also list each operator's types (required_operators_and_types.config instead of "
                    "required_operators.config): a smaller reduced build, with "
                    "--enable_reduced_operator_type_support")
    min_same_as_source: float = within(
        0.0, 1.0, default=0.99,
        help="the least share of samples, on every evaluation set, where the .ort answers as its source ONNX model "
             "does (top-1 class for a classifier, else the worst output's mean cosine); below it the stage fails")
    # Cosine barely moves when a regressor's outputs shift by a rounding step; an absolute bound sees it.
    max_error_vs_source: float | None = setting(
        None, help="the largest |difference| allowed between any output of the .ort and of its source, on every "
                   "evaluation set; above it the stage fails (none: only min_same_as_source is checked)")

    def __post_init__(self) -> None:
        if self.max_error_vs_source is not None and not self.max_error_vs_source >= 0:
            raise ValueError("max_error_vs_source must be 0 or more")
        for name in self.disabled_optimizers:
            if not name.isidentifier():
                raise ValueError(f"disabled_optimizers: {name!r} is not an ONNX Runtime transformer name "
                                 "(e.g. SkipLayerNormFusion)")

    @property
    def config_name(self) -> str:
        return TYPED_OPERATOR_CONFIG if self.operator_types else OPERATOR_CONFIG


def convert(source: Path, *, out: Path, config: Path, settings: OrtFormatSettings, log=print) -> None:
    """`source` (.onnx) -> `out` (.ort) and `config` (its required operators), by onnxruntime.tools'
    convert_onnx_models_to_ort in the Fixed style (every optimisation applied now: what the CPU runs).
    Only `out`'s folder is written (a scratch folder inside it, removed)."""
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    # A fresh folder of its own: nothing already beside `out` is touched, whatever its name.
    scratch = Path(tempfile.mkdtemp(prefix=".ort-convert-", dir=out.parent))
    platform = None if settings.target_platform == "any" else settings.target_platform
    try:
        with _level(_LEVEL_NAMES[settings.optimization_level]), tool_output_to(log):
            if settings.disabled_optimizers:
                _save_as_ort(Path(source), scratch / "model.ort", settings=settings)
            else:
                convert_onnx_models_to_ort(Path(source), output_dir=scratch,
                                           optimization_styles=[OptimizationStyle.Fixed], target_platform=platform,
                                           enable_type_reduction=settings.operator_types)
        converted = sorted(scratch.rglob("*.ort"))
        if len(converted) != 1:
            raise UserError(f"ONNX Runtime's converter wrote {len(converted)} .ort files from {source}",
                            fix="pass one ONNX model (edgepress converts each stage's own file)")
        os.replace(converted[0], out)
    except UserError:
        raise
    except Exception as exc:  # the converter raises what ONNX Runtime raises: a graph it cannot load or save
        reason = " ".join(str(exc).split())[:300]
        raise UserError(f"ONNX Runtime could not convert {source} to ORT format ({reason})",
                        fix='try optimization_level = "basic", or check the model loads in this onnxruntime') from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # ONNX Runtime's config writer again, on the .ort in place: the header then names the file that ships.
    write_config([out], config, with_types=settings.operator_types, names=[out.name])


def _save_as_ort(source: Path, out: Path, *, settings: OrtFormatSettings) -> None:
    """What convert_onnx_models_to_ort does for one model in the Fixed style (a session that saves the graph it
    optimised, in ORT format, with the same session entries and NCHWc rule), plus the transformers to skip, which
    its function cannot pass on."""
    import onnxruntime as ort
    from onnxruntime.tools.onnx_model_utils import get_optimization_level

    out.parent.mkdir(parents=True, exist_ok=True)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(out)
    options.graph_optimization_level = get_optimization_level(_LEVEL_NAMES[settings.optimization_level])
    options.add_session_config_entry("session.qdqisint8allowed", "1" if settings.target_platform == "arm" else "0")
    options.add_session_config_entry("session.save_model_format", "ORT")
    skipped = list(settings.disabled_optimizers)
    if settings.optimization_level in ("layout", "all") and settings.target_platform != "amd64":
        skipped.append("NchwcTransformer")
    ort.InferenceSession(str(source), sess_options=options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=skipped)


@contextlib.contextmanager
def _level(name: str):
    before = os.environ.get(_LEVEL_VARIABLE)
    os.environ[_LEVEL_VARIABLE] = name
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(_LEVEL_VARIABLE, None)
        else:
            os.environ[_LEVEL_VARIABLE] = before


def compare_with_source(ort_model: Artifact, source: Artifact, ctx: StageContext, *,
                        disabled_optimizers: tuple[str, ...] = ()) -> dict[str, dict[str, float]]:
    """{evaluation set: samples, same_as_source and max_abs_error_vs_source} of the .ort against its source on
    this machine: the one kernel set, and the source's session skipping the transformers the .ort left out, so
    what differs is what the conversion changed."""
    from edgepress.measure import metrics
    from edgepress.measure.evaluation import outputs as run_outputs

    found = {}
    for labeled in ctx.data.evaluation:
        converted = run_outputs(ort_model, labeled, batch_size=_BATCH)
        original = run_outputs(source, labeled, batch_size=_BATCH, disabled_optimizers=disabled_optimizers)
        if list(converted) != list(original):
            raise UserError(f"the .ort model's outputs {list(converted)} are not its source's {list(original)}",
                            fix='try optimization_level = "basic"')
        errors = [v["max_abs_error"] for v in metrics.per_output_fidelity(converted, original).values()]
        same = (ctx.task.same_answers(converted, original) if ctx.task is not None else
                float(np.mean([np.array_equal(converted[k], original[k]) for k in converted])))
        found[labeled.name] = {"samples": len(labeled), "same_as_source": float(same),
                               "max_abs_error_vs_source": float(max(errors, default=0.0))}
    return found


def check_platform(settings: OrtFormatSettings, targets: tuple[str, ...]) -> None:
    """An "amd64" .ort bakes in NCHWc blocks as wide as this CPU's vectors: on an x86 CPU of another width it runs
    and answers wrongly (a conv net under qemu-x86_64 as Haswell was off by up to 24.8 in an output), with no error."""
    from edgepress.targets import scheme_of

    elsewhere = [name for name in targets if scheme_of(name) != "local"]
    if settings.target_platform == "amd64" and elsewhere:
        raise UserError(f'target_platform = "amd64" bakes in a layout sized for this machine\'s CPU, and the recipe '
                        f"also runs the .ort on {elsewhere[0]}",
                        fix='use target_platform = "any" (or "arm" for a phone), or convert on the device\'s kind '
                            "of CPU with only a local target")


def run(source: Artifact, settings: OrtFormatSettings, ctx: StageContext) -> StageOutput:
    import onnxruntime

    from edgepress.io.onnx_stats import count_params_and_macs

    check_platform(settings, ctx.targets)  # a pure call's targets too, not only a recipe's
    out = ctx.output_path("ort")
    config = ctx.work_dir / settings.config_name
    ctx.log(f"converting with ONNX Runtime {onnxruntime.__version__}: level {settings.optimization_level}, "
            f"platform {settings.target_platform}")
    convert(source.path, out=out, config=config, settings=settings, log=ctx.log)
    converted = Artifact(path=out, format="ort")
    checked = compare_with_source(converted, source, ctx, disabled_optimizers=settings.disabled_optimizers)
    for name, found in checked.items():
        ctx.log(f"{name}: same as the source on {found['same_as_source']:.4f}, max |error| "
                f"{found['max_abs_error_vs_source']:.3g}")
        if found["same_as_source"] < settings.min_same_as_source:
            raise UserError(f"the .ort model answers as its source ONNX model does on only "
                            f"{found['same_as_source']:.4f} of {name} (min_same_as_source "
                            f"{settings.min_same_as_source:g}) at optimization_level {settings.optimization_level!r}",
                            fix='use optimization_level = "all" or "extended" (at "basic" Q/DQ pairs run in float), '
                                "or lower min_same_as_source where NNAPI or CoreML runs the model")
        limit = settings.max_error_vs_source
        if limit is not None and found["max_abs_error_vs_source"] > limit:
            raise UserError(f"the .ort model's outputs differ from its source ONNX model's by up to "
                            f"{found['max_abs_error_vs_source']:.3g} on {name} (max_error_vs_source {limit:g}) at "
                            f"optimization_level {settings.optimization_level!r}",
                            fix='use optimization_level = "all" or "extended" (at "basic" Q/DQ pairs run in float), '
                                "or raise max_error_vs_source")
    source_stage = next((name for name, a in ctx.artifacts.items() if a.path == source.path), None)
    listed = operators(out)
    # The .ort holds the source's weights and computation, rearranged: its params and MACs are the source's.
    params, macs = count_params_and_macs(source.path)
    own: dict[str, Any] = {
        "source_stage": source_stage, "source_size_bytes": source.path.stat().st_size,
        "optimization_level": settings.optimization_level, "target_platform": settings.target_platform,
        "onnxruntime": onnxruntime.__version__, "config": config.name, "operators": list(listed),
        "evaluation": checked,
    }
    return StageOutput(artifact=converted, metrics={"params": int(params), "macs": int(macs), "ort_format": own,
                                                    "converted_from": source_stage})


STAGE = StageDef(kind="ort_format", settings_type=OrtFormatSettings, input_format="onnx", output_format="ort", run=run,
                 modalities=("image", "text"), check_targets=check_platform,
                 when_slower="the .ort runs what its optimisation level baked in, and no session optimises it again: "
                             "time it against its source (`edgepress bench model.ort --compare SOURCE.onnx`), try "
                             "another optimization_level, or gate it with latency_ratio_max",
                 summary="ONNX -> ORT format (.ort) for ONNX Runtime Mobile, with the required-operators config of a "
                         "reduced build, checked against its source on the evaluation sets")
