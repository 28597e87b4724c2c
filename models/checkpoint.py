"""Load trained weights into a model, safely (weights_only) and with one-line errors."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgepress.core.archives import check_unpacked_size
from edgepress.core.errors import UserError

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
_SHOWN = 5  # keys named per category in a mismatch message; the rest are counted


def load_checkpoint(*, path: Path, model: nn.Module) -> dict[str, Any]:
    """Load `path` into `model` strictly; returns {"tensors": n, ...scalar metadata such as best_prec1}."""
    path = Path(path)
    raw = _read(path)
    state, wrapper = _find_state_dict(raw, path=path)
    state, stripped = _strip_prefix(state)
    stored = len(state)
    _fill_batch_counters(state, model)
    _check_match(state, model, path=path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # anything _check_match did not foresee, still one line
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()] or [type(exc).__name__]
        # torch's first line is a header ("Error(s) in loading state_dict for X:"); the reason follows it
        reason = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise UserError(f"checkpoint {path.name} does not fit the model: {reason[:300]}",
                        fix="pick the architecture and kwargs the checkpoint was trained with") from None
    info: dict[str, Any] = {"tensors": stored}
    if wrapper is not None:
        info["wrapper_key"] = wrapper
        info.update({k: v for k, v in raw.items()
                     if isinstance(k, str) and isinstance(v, (int, float, str, bool)) and k not in _WRAPPER_KEYS})
    if stripped:
        info["stripped_prefix"] = "module."
    return info


def _read(path: Path) -> Any:
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist", fix="check [model].checkpoint (use {data}/... for shared data)")
    if not path.is_file():
        raise UserError(f"checkpoint {path} is not a file", fix="point [model].checkpoint at a .pt/.pth/.th file")
    check_unpacked_size(path, what="checkpoint", fix="re-save it with torch.save(model.state_dict(), path)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for bad files
        message = str(exc)
        needs_global = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", message)
        if needs_global:
            raise UserError(f"checkpoint {path.name} holds Python objects ({needs_global.group(1)}) that only "
                            "torch.load(weights_only=False) would unpickle; edgepress loads weights only, never code",
                            fix="re-save it as plain tensors: torch.save(model.state_dict(), path)") from None
        raise UserError(f"{path.name} is not a readable torch checkpoint (corrupt, truncated or another format)",
                        fix="re-download or re-save it with torch.save(model.state_dict(), path)") from None


def _is_state_dict(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(k, str) for k in value)
            and any(isinstance(v, torch.Tensor) for v in value.values()))


def _find_state_dict(raw: Any, *, path: Path) -> tuple[dict[str, Any], str | None]:
    if isinstance(raw, dict):
        for key in _WRAPPER_KEYS:
            if _is_state_dict(raw.get(key)):
                return dict(raw[key]), key
        if _is_state_dict(raw):
            return dict(raw), None
        keys = ", ".join(map(str, list(raw)[:8])) or "none"
        raise UserError(f"checkpoint {path.name} has no state_dict (top-level keys: {keys})",
                        fix="save the weights as a state_dict or under 'state_dict' / 'model_state_dict' / 'model'")
    raise UserError(f"checkpoint {path.name} holds a {type(raw).__name__}, not a state_dict",
                    fix="save it with torch.save(model.state_dict(), path)")


def _strip_prefix(state: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """DataParallel saves every key under 'module.'; the bare model has none."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}, True
    return state, False


def _fill_batch_counters(state: dict[str, Any], model: nn.Module) -> None:
    """Checkpoints from torch < 0.4 lack BatchNorm's num_batches_tracked, which inference never reads."""
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = value.clone()


def _check_match(state: dict[str, Any], model: nn.Module, *, path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in expected
              if k in state and isinstance(state[k], torch.Tensor) and state[k].shape != expected[k].shape]
    not_weights = [f"{k}: {_what(state[k])}" for k in expected if k in state and _what(state[k])]
    if not (missing or unexpected or shapes or not_weights):
        return
    parts = []
    if not_weights:
        parts.append(f"{len(not_weights)} values are not dense tensors with data ({_names(not_weights)})")
    if missing:
        parts.append(f"{len(missing)} missing ({_names(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected ({_names(unexpected)})")
    if shapes:
        shown = ", ".join(f"{k} checkpoint {list(a)} vs model {list(b)}" for k, a, b in shapes[:_SHOWN])
        more = f", +{len(shapes) - _SHOWN} more" if len(shapes) > _SHOWN else ""
        parts.append(f"{len(shapes)} shape mismatches ({shown}{more})")
    raise UserError(f"checkpoint {path.name} does not match the model: " + "; ".join(parts),
                    fix=_suggest_architecture(state))


def _what(value: Any) -> str:
    """'' for a tensor load_state_dict can copy from, else what the value is instead."""
    if not isinstance(value, torch.Tensor):
        return f"a {type(value).__name__}"
    if value.is_meta:
        return "a meta tensor without data"
    if value.layout != torch.strided:
        return f"a {str(value.layout).replace('torch.', '')} tensor"
    return ""


def _names(keys: list[str]) -> str:
    more = f", +{len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _suggest_architecture(state: dict[str, Any]) -> str:
    """Name the zoo models whose default build has exactly the checkpoint's keys and shapes."""
    wanted = {k: tuple(v.shape) for k, v in state.items()
              if isinstance(v, torch.Tensor) and not k.endswith("num_batches_tracked")}
    matches = [name for name, shapes in _zoo_shapes().items() if shapes == wanted]
    if matches:
        return f"the checkpoint matches zoo model {' / '.join(matches)}: set [model] name = {matches[0]!r}"
    return ("pick the architecture and kwargs the checkpoint was trained with "
            "(e.g. cifar_resnet56, not cifar_resnet20, for a ResNet-56 checkpoint; num_classes)")


@functools.lru_cache(maxsize=1)
def _zoo_shapes() -> dict[str, dict[str, tuple[int, ...]]]:
    """{zoo name: {key: shape}} of every zoo model's default build, built once per process (it takes a second)."""
    from edgepress.models.zoo import ZOO  # only on the mismatch error path

    found = {}
    for name, entry in ZOO.items():
        try:
            have = entry.builder().state_dict()
        except Exception:  # a zoo builder failing is not this user's problem; just skip it
            continue
        found[name] = {k: tuple(v.shape) for k, v in have.items() if not k.endswith("num_batches_tracked")}
    return found
