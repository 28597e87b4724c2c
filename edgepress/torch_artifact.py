"""model.pt: the architecture reference plus weights, loadable with weights_only=True.

A pickled nn.Module would need weights_only=False, i.e. running code from the file;
instead we store how to rebuild the module (zoo name or entry point, kwargs) and its tensors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from edgepress.errors import UserError
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
    model.load_state_dict(payload["state_dict"], strict=True)
    model.eval()
    return model, tuple(payload["input_shape"]), builder


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> int:
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, _ = tp.utils.count_ops_and_params(model, torch.zeros(1, *input_shape))
    model.train(was_training)
    return int(macs)
