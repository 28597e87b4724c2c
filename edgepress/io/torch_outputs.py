"""A torch model's inputs and outputs by name, the same names its ONNX export gets (export/export.py).

Inputs: a one-input model's is "input"; a model with several takes them by its forward's argument names.
Outputs: one tensor is "output"; a tuple or list gives "output_0", "output_1", ...; a dict keeps its keys
(nested containers join their keys with "_"). Anything else a forward returns is refused in one line.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

from edgepress.core.errors import UserError

__all__ = ["input_names", "flatten", "forward", "SINGLE_INPUT", "SINGLE_OUTPUT"]

SINGLE_INPUT = "input"
SINGLE_OUTPUT = "output"
OUTPUTS_FIX = "make forward return a tensor, a tuple/list of tensors or a dict of tensors"


def input_names(model: torch.nn.Module) -> tuple[str, ...]:
    """The forward's required arguments, by name; one becomes "input" (what export and the device runner use)."""
    if hasattr(model, "input_names"):  # a text encoder says which token arrays it reads
        return tuple(model.input_names)
    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):  # a builtin or C++ forward: one input
        return (SINGLE_INPUT,)
    required = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
                and p.default is p.empty]
    return tuple(required) if len(required) > 1 else (SINGLE_INPUT,)


def flatten(out: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return {prefix or SINGLE_OUTPUT: out}
    if isinstance(out, dict):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, (tuple, list)):
        items = [(f"{SINGLE_OUTPUT}_{i}" if not prefix else str(i), v) for i, v in enumerate(out)]
    else:
        raise UserError(f"the model's forward returns a {type(out).__name__}{' inside its outputs' if prefix else ''}, "
                        "not tensors", fix=OUTPUTS_FIX)
    if not items:
        raise UserError("the model's forward returns an empty container", fix=OUTPUTS_FIX)
    found: dict[str, torch.Tensor] = {}
    for key, value in items:
        found.update(flatten(value, f"{prefix}_{key}" if prefix else key))
    return found


def forward(model: torch.nn.Module, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's outputs by name on a batch of named arrays (in the model's input order)."""
    names = input_names(model)
    arrays = [feeds[n] for n in names] if all(n in feeds for n in names) else list(feeds.values())[:len(names)]
    with torch.no_grad():
        out = model(*[torch.from_numpy(np.ascontiguousarray(v)) for v in arrays])
    return {name: value.detach().numpy() for name, value in flatten(out).items()}
