"""How channels are cut: the torch-pruning mechanics shared by the `prune` stage and the
sensitivity analysis (what is coupled, how it is scored, one cut, and a check that it ran)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from edgepress.core.errors import UserError

if TYPE_CHECKING:
    from edgepress.compress.pruning.settings import PruneSettings


def importance_for(kind: str):
    import torch_pruning as tp

    return {"l1": lambda: tp.importance.MagnitudeImportance(p=1),
            "l2": lambda: tp.importance.MagnitudeImportance(p=2),
            "bn_scale": lambda: tp.importance.BNScaleImportance(),
            "taylor": lambda: tp.importance.TaylorImportance()}[kind]()


def ignored_layers(model, settings: PruneSettings, *, example=None) -> list:
    """The user's ignored layers, those the model declares unprunable, and the layers that make its outputs
    (the classes of a classifier, every head of a detector): their channels are what the outputs mean."""
    import torch

    from edgepress.core.layer_names import require_layers

    ignored = list(require_layers(model, settings.ignored_layers, setting="ignored_layers").values())
    declared = getattr(model, "unprunable_layers", None)
    if callable(declared):
        ignored += list(declared())
    heads = output_layers(model, example) if example is not None else []
    if not heads:  # untraceable: the last layer, as for a plain classifier
        layers = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        heads = layers[-1:]
    return ignored + [m for m in heads if all(m is not i for i in ignored)]


def output_layers(model, example) -> list:
    """The Linear/Conv layers nearest to each model output, found through autograd: each output's graph is
    walked back until it reaches one of their results (through activations, reshapes and adds)."""
    import torch

    from edgepress.compress.training.loop import call
    from edgepress.io.torch_outputs import flatten

    produced: dict = {}

    def remember(module, args, out) -> None:  # returns None: a forward hook's return value replaces the output
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            produced.setdefault(out.grad_fn, module)

    hooks = [m.register_forward_hook(remember) for m in model.modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            outputs = flatten(call(model, dict(enumerate(example)) if isinstance(example, tuple) else example))
    except Exception:  # noqa: BLE001 - torch-pruning's own trace reports what breaks, in one line
        return []
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    found = []
    for tensor in outputs.values():
        frontier, seen = [tensor.grad_fn], set()
        while frontier:
            node = frontier.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            if node in produced:
                found += [produced[node]] if all(produced[node] is not m for m in found) else []
                continue
            frontier += [parent for parent, _ in node.next_functions]
    return found


def prunable_layers(model, *, input_shape: tuple[int, ...], settings: PruneSettings) -> list[str]:
    """Names of the layers that root a pruning group in torch-pruning's dependency graph, in model order.

    Exactly the groups MetaPruner would cut: coupled layers (the next conv's inputs, the BN)
    follow their root, and ignored layers (settings, `unprunable_layers()`, classifier) root none."""
    import torch
    import torch_pruning as tp

    traced = copy.deepcopy(model).eval()  # tracing runs a forward pass; the caller's model stays untouched
    example = torch.zeros(1, *input_shape)
    graph = tp.DependencyGraph().build_dependency(traced, example_inputs=example)
    ignored = ignored_layers(traced, settings, example=example)
    roots = {group[0].dep.target.module for group in graph.get_all_groups(ignored_layers=ignored)}
    return [name for name, module in traced.named_modules() if module in roots]


def rounded_ratio(channels: int, ratio: float, *, round_to: int) -> float:
    """The ratio that keeps the multiple of `round_to` nearest to channels x (1 - ratio), at least one
    multiple; 0 when that keeps them all."""
    kept = max(round_to, int(channels * (1.0 - ratio) / round_to + 0.5) * round_to)
    # torch-pruning keeps int(channels x (1 - ratio)); a hair more than `kept` survives float error.
    return 0.0 if kept >= channels else (channels - kept - 1e-6) / channels


def _width(module) -> int:
    return int(getattr(module, "out_channels", None) or module.out_features)


def make_pruner(pruned, *, example, settings: PruneSettings, ratio: float = 0.0,
                layer_ratios: dict[str, float] | None = None, steps: tuple[float, ...] = (1.0,)):
    """MetaPruner on `pruned`: every group at `ratio`, or exactly the named layers' groups at theirs
    (local ranking); step k cuts each to steps[k] x its ratio."""
    import torch_pruning as tp

    from edgepress.core.layer_names import require_layers

    modules = require_layers(pruned, list(layer_ratios or {}), setting="layer ratios")
    round_to = settings.round_to
    if layer_ratios is not None and round_to and len(steps) == 1:
        # Rounded here, to the nearest multiple: torch-pruning floors the kept count and, where that
        # reaches 0, silently prunes nothing, so MACs would jump back up as the ratio grows.
        layer_ratios = {n: rounded_ratio(_width(modules[n]), r, round_to=round_to) for n, r in layer_ratios.items()}
        round_to = None
    try:
        return tp.pruner.MetaPruner(
            pruned, example, importance=importance_for(settings.importance), pruning_ratio=ratio,
            pruning_ratio_dict=None if layer_ratios is None else {modules[n]: r for n, r in layer_ratios.items() if r > 0.0},
            ignored_layers=ignored_layers(pruned, settings, example=example), global_pruning=settings.global_ranking and not layer_ratios,
            round_to=round_to, iterative_steps=len(steps),
            iterative_pruning_ratio_scheduler=lambda target, _: [0.0] + [target * s for s in steps])
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"torch-pruning cannot trace this model: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}",
                        fix="list the layers around the failing operation in ignored_layers") from None


def cut(pruner, pruned, *, settings: PruneSettings, calibration) -> None:
    """One pruning step; taylor importance first needs gradients of the loss on labelled data."""
    import torch

    if settings.importance == "taylor":
        if calibration is None:
            raise UserError("taylor importance needs data", fix="add [data.training] or [data.calibration]")
        inputs, labels = calibration
        pruned.zero_grad()
        torch.nn.functional.cross_entropy(pruned(inputs), labels).backward()
    pruner.step()
    pruned.zero_grad(set_to_none=True)


def prune_with_layer_ratios(model, *, example, layer_ratios: dict[str, float], settings: PruneSettings,
                            calibration=None):
    """A pruned deep copy: each named layer's group loses its own share of channels, all others none."""
    pruned = copy.deepcopy(model).eval()
    cut(make_pruner(pruned, example=example, settings=settings, layer_ratios=layer_ratios), pruned,
        settings=settings, calibration=calibration)
    check_forward(pruned, example=example)
    return pruned


def prune_copy(model, *, example, ratio: float, settings: PruneSettings, calibration=None):
    """A pruned deep copy of `model` at one ratio for every group (the input model is never changed)."""
    if settings.round_to and not settings.global_ranking:
        # The same ratio for every prunable layer, rounded by edgepress (see rounded_ratio).
        if isinstance(example, tuple):
            raise UserError("round_to works on one-input models", fix="drop round_to from this prune stage")
        layers = prunable_layers(model, input_shape=tuple(example.shape[1:]), settings=settings)
        return prune_with_layer_ratios(model, example=example, layer_ratios={n: ratio for n in layers},
                                       settings=settings, calibration=calibration)
    pruned = copy.deepcopy(model).eval()
    cut(make_pruner(pruned, example=example, settings=settings, ratio=ratio), pruned, settings=settings,
        calibration=calibration)
    check_forward(pruned, example=example)
    return pruned


def check_forward(pruned, *, example) -> None:
    """Run the pruned model once and, if it breaks, name the operation torch-pruning could not follow.

    Torch-pruning traces autograd; an operation hidden from it (a hard-coded reshape, a tensor that
    leaves autograd, a raw parameter used functionally) leaves one side of a coupling unpruned, and
    the first layer to see mismatched channels is where the user must look."""
    import torch

    entered: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, name=name: entered.append(name))
             for name, m in pruned.named_modules() if name and not list(m.children())]
    try:
        with torch.no_grad():
            pruned(*example) if isinstance(example, tuple) else pruned(example)
    except Exception as exc:
        last = entered[-1] if entered else "the model's first operation"
        kind = type(dict(pruned.named_modules()).get(last, pruned)).__name__
        raise UserError(f"torch-pruning cannot trace this model: after pruning, the forward pass fails at or after "
                        f"{last!r} ({kind}): {' '.join(str(exc).split())[:160]}",
                        fix=f"list {last!r} (and the layer feeding it) in ignored_layers, or replace the operation "
                            "there that torch-pruning cannot see (a hard-coded shape, a tensor leaving autograd)") from None
    finally:
        for hook in hooks:
            hook.remove()
