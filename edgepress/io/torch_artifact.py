"""model.pt: the architecture reference plus weights, loadable with weights_only=True.

A pickled nn.Module would need weights_only=False, i.e. running code from the file;
instead we store how to rebuild the module (zoo name or entry point, kwargs) and its tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgepress.core.errors import UserError
from edgepress.models.zoo import build_model

FORMAT = "edgepress.torch/1"


def save(path: Path, *, model: torch.nn.Module, builder: dict[str, Any], input_shape: tuple[int, ...]) -> None:
    payload = {
        "format": FORMAT,
        "builder": builder,
        "input_shape": list(input_shape),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    torch.save(payload, path)


def load(path: Path) -> tuple[torch.nn.Module, tuple[int, ...], dict[str, Any]]:
    """(model in eval mode, per-sample input shape, builder reference)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path} is not an edgepress torch artifact ({' '.join(str(exc).split())[:160]})",
                        fix="rerun the stage that produced it") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path} is not an edgepress torch artifact", fix="rerun the stage that produced it")
    builder = payload["builder"]
    model = build_model(name=builder.get("name"), entry=builder.get("entry"), kwargs=builder.get("kwargs", {}))
    replace_with_identity(model, builder.get("removed_blocks", []), path=path)
    conform_to(model, payload["state_dict"], path=path)
    model.load_state_dict(payload["state_dict"], strict=True)
    model.eval()
    return model, tuple(payload["input_shape"]), builder


def replace_with_identity(model: torch.nn.Module, names: list[str], *, path: Path | None = None) -> None:
    """Depth pruning's record: the named blocks become nn.Identity (their state_dict keys vanish)."""
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str) or not name or name not in modules:
            raise UserError(f"{path or 'the model'} removes block {name!r}, which the model does not have",
                            fix="rerun the stage that produced it")
        parent, _, child = name.rpartition(".")
        setattr(modules[parent], child, torch.nn.Identity())


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...],
               inputs: dict[str, list] | None = None) -> int:
    """`inputs`: {name: [per-sample shape, dtype]} of a model with several inputs (the builder records them)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    # A text model makes its own token inputs ([sequence length] is its input shape); an image model takes zeros.
    if hasattr(model, "example_inputs"):
        example = model.example_inputs(batch=1, sequence_length=input_shape[0])
    elif inputs and len(inputs) > 1:
        example = tuple(torch.zeros(1, *shape, dtype=getattr(torch, dtype)) for shape, dtype in inputs.values())
    else:
        example = torch.zeros(1, *input_shape)
    macs, _ = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return int(macs)


def conform_to(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], *, path: Path) -> None:
    """Resize layers to the stored tensors' shapes, so a channel-pruned model rebuilds from its builder.

    Pruning changes only channel counts; re-creating each layer's tensors at the stored shapes
    (and its size attributes) recovers the pruned architecture without pickling any code.
    """
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        own = {k[len(prefix):]: v for k, v in state_dict.items()
               if k.startswith(prefix) and "." not in k[len(prefix):]}
        current = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
        changed = {k for k, v in own.items() if k in current and current[k] is not None and current[k].shape != v.shape}
        if not changed:
            continue
        if isinstance(module, torch.nn.Conv2d):
            depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
            out_channels, in_per_group = own["weight"].shape[:2]
            module.groups = out_channels if depthwise else module.groups
            module.out_channels, module.in_channels = out_channels, in_per_group * module.groups
        elif isinstance(module, torch.nn.Linear):
            module.out_features, module.in_features = own["weight"].shape
        elif isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.num_features = own["running_mean"].shape[0]
        else:
            raise UserError(f"{path} resizes {type(module).__name__} {name!r}, which edgepress cannot rebuild",
                            fix="prune only Conv2d, Linear and BatchNorm layers (list others in ignored_layers)")
        for key in changed:
            fresh = torch.empty(own[key].shape, dtype=own[key].dtype)
            if key in dict(module.named_parameters(recurse=False)):
                setattr(module, key, torch.nn.Parameter(fresh))
            else:
                module.register_buffer(key, fresh)
