"""edgepress: from a trained PyTorch model to a small, fast, validated ONNX model.

The Python API (edgepress/api.py and each stage's pure function), imported on first use: `import edgepress`
stays cheap and torch-free, because `edgepress.runtime` runs on devices that have only onnxruntime and numpy.

    import edgepress as ep
    recipe = ep.load_recipe("recipe.toml")
    report = ep.run(recipe, out="runs/r20")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> "module:attribute". One explicit table, like the stage registry.
_API = {
    # a recipe, in a file or built in code; checked, run, gated
    "Recipe": "edgepress.recipe:Recipe",
    "load_recipe": "edgepress.api:load_recipe",
    "recipe_from_dict": "edgepress.api:recipe_from_dict",
    "CheckResult": "edgepress.api:CheckResult",
    "check": "edgepress.api:check",
    "run": "edgepress.api:run",
    "bench": "edgepress.api:bench",
    "gate": "edgepress.api:gate",
    "output_folder": "edgepress.api:output_folder",
    "merge_operators": "edgepress.api:merge_operators",
    "MergedOperators": "edgepress.api:MergedOperators",
    "Report": "edgepress.report.model:Report",
    "read_report": "edgepress.report.model:read_report",
    "GateResult": "edgepress.gating.release:GateResult",
    "UserError": "edgepress.core.errors:UserError",
    "STAGES": "edgepress.stages.registry:REGISTRY",
    # each stage's pure function and its settings: files or modules in, a result out
    "ExportSettings": "edgepress.export.export:ExportSettings",
    "export_onnx": "edgepress.export.export:export_onnx",
    "export_transformer": "edgepress.export.export_transformer:export_transformer",
    "PtqSettings": "edgepress.compress.ptq:PtqSettings",
    "quantize_static": "edgepress.compress.ptq:quantize",
    "AccuracyAwarePtqSettings": "edgepress.compress.accuracy_aware_ptq:AccuracyAwarePtqSettings",
    "search_accuracy_aware_ptq": "edgepress.compress.accuracy_aware_ptq:search",
    "DynamicInt8Settings": "edgepress.compress.dynamic_int8:DynamicInt8Settings",
    "quantize_dynamic_int8": "edgepress.compress.dynamic_int8:quantize_int8",
    "Int4WeightsSettings": "edgepress.compress.int4_weights:Int4WeightsSettings",
    "quantize_int4_weights": "edgepress.compress.int4_weights:quantize_int4",
    "FusionSettings": "edgepress.compress.fuse_transformer:FusionSettings",
    "fuse_transformer": "edgepress.compress.fuse_transformer:fuse_transformer",
    "PruneSettings": "edgepress.compress.prune:PruneSettings",
    "prune_to_macs": "edgepress.compress.prune:prune_to_macs",
    "DepthSettings": "edgepress.compress.prune_depth:DepthSettings",
    "remove_blocks": "edgepress.compress.prune_depth:remove_blocks",
    "SparsifySettings": "edgepress.compress.sparsify:SparsifySettings",
    "sparsify": "edgepress.compress.sparsify:sparsify",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'edgepress' has no attribute {name!r}")
    module, _, attribute = _API[name].partition(":")
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
