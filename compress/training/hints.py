"""Feature (hint) loss for `distill` (FitNets, Romero et al.): the student's intermediate features
are pulled towards the teacher's at named layers, through a learned 1x1 adapter where widths differ.

The adapters exist only while training: they join the optimizer and the resume checkpoint, and
are dropped afterwards, so the saved student is exactly the student architecture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from edgepress.core.errors import UserError
from edgepress.core.schema import closest

AdapterKind = Literal["none", "conv1x1", "linear"]


@dataclass(frozen=True)
class HintPair:
    student_layer: str
    teacher_layer: str
    student_shape: tuple[int, ...]  # per sample, e.g. (C, H, W)
    teacher_shape: tuple[int, ...]
    adapter: AdapterKind

    def as_metrics(self) -> dict[str, Any]:
        return {"student_layer": self.student_layer, "teacher_layer": self.teacher_layer,
                "student_width": self.student_shape[0], "teacher_width": self.teacher_shape[0],
                "feature_shape": list(self.teacher_shape), "adapter": self.adapter}


class _Capture:
    """Keeps each named layer's latest output; counts calls so a layer run twice per forward is caught."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], *, role: str, setting: str) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}
        self._handles = []
        for name in dict.fromkeys(names):
            if name not in modules or not name:
                guess = closest(name, [n for n in modules if n])
                raise UserError(f"{setting} names {name!r}, which matches no layer of the {role}",
                                fix=(f"did you mean {guess!r}?" if guess else
                                     "use module names as printed by model.named_modules()")
                                + (" (hint_teacher_layers names the teacher's layers where they differ)"
                                   if role.startswith("teacher") else ""))
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def keep(module, inputs, output):
            self.calls[name] = self.calls.get(name, 0) + 1
            # Cloned: an in-place op after the layer (ReLU(inplace=True)) would otherwise rewrite it.
            self.outputs[name] = output.clone() if isinstance(output, torch.Tensor) else output
        return keep

    def reset(self) -> None:
        self.outputs.clear()
        self.calls.clear()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.reset()


class FeatureHints:
    """Hooks on the student's and teacher's hint layers, and the adapters (student width -> teacher width)."""

    def __init__(self, *, student: nn.Module, teacher: nn.Module, student_layers: tuple[str, ...],
                 teacher_layers: tuple[str, ...], probe: torch.Tensor, teacher_role: str, seed: int) -> None:
        if len(student_layers) != len(teacher_layers):
            raise ValueError("student_layers and teacher_layers must have equal lengths")
        self._names = tuple(zip(student_layers, teacher_layers))
        self._student = _Capture(student, student_layers, role="student", setting="hint_layers")
        teacher_setting = "hint_teacher_layers" if student_layers != teacher_layers else "hint_layers"
        try:
            self._teacher = _Capture(teacher, teacher_layers, role=f"teacher {teacher_role}", setting=teacher_setting)
        except UserError:
            self._student.close()
            raise
        try:
            self.pairs = self._probe(student, teacher, probe)
        except UserError:
            self.close()
            raise
        # Seeded apart from the global stream: the same recipe gives the same adapters, and building
        # them does not shift the random numbers the loop draws afterwards.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.adapters = nn.ModuleList([_adapter(pair) for pair in self.pairs])

    def _probe(self, student: nn.Module, teacher: nn.Module, probe: torch.Tensor) -> tuple[HintPair, ...]:
        modes = (student.training, teacher.training)
        student.eval()
        teacher.eval()
        try:
            with torch.no_grad():
                self.reset()
                teacher(probe)
                student(probe)
                pairs = tuple(self._pair(s, t) for s, t in self._names)
        finally:
            student.train(modes[0])
            teacher.train(modes[1])
            self.reset()
        return pairs

    def _pair(self, student_layer: str, teacher_layer: str) -> HintPair:
        s = _feature(self._student, student_layer, role="student")
        t = _feature(self._teacher, teacher_layer, role="teacher")
        s_shape, t_shape = tuple(s.shape[1:]), tuple(t.shape[1:])
        where = f"hint layers {student_layer!r} (student, {list(s_shape)}) and {teacher_layer!r} (teacher, {list(t_shape)})"
        if s_shape == t_shape:
            kind: AdapterKind = "none"
        elif len(s_shape) != len(t_shape) or len(s_shape) not in (1, 3):
            raise UserError(f"{where} have shapes that no 1x1 adapter maps onto each other",
                            fix="pair layers whose features are both (C, H, W) or both (C,)")
        elif s_shape[1:] != t_shape[1:]:
            raise UserError(f"{where} differ in spatial size", fix="pair layers at the same resolution")
        else:
            kind = "conv1x1" if len(s_shape) == 3 else "linear"
        return HintPair(student_layer=student_layer, teacher_layer=teacher_layer, student_shape=s_shape,
                        teacher_shape=t_shape, adapter=kind)

    def reset(self) -> None:
        """Forget captured features; call before each training step's forward passes."""
        self._student.reset()
        self._teacher.reset()

    def loss(self):
        """Sum over pairs of MSE(adapter(student feature), teacher feature); the teacher side carries no gradient."""
        total = None
        for pair, adapter in zip(self.pairs, self.adapters):
            student = self._student.outputs[pair.student_layer]
            teacher = self._teacher.outputs[pair.teacher_layer].detach()
            term = nn.functional.mse_loss(adapter(student).float(), teacher.float())
            total = term if total is None else total + term
        self.reset()
        return total

    def close(self) -> None:
        self._student.close()
        self._teacher.close()


def _feature(capture: _Capture, name: str, *, role: str) -> torch.Tensor:
    calls = capture.calls.get(name, 0)
    if calls != 1:
        raise UserError(f"hint layer {name!r} of the {role} runs {calls} times per forward pass",
                        fix="name a layer that runs exactly once (a layer of its own, not a shared activation)")
    output = capture.outputs[name]
    if not isinstance(output, torch.Tensor):
        raise UserError(f"hint layer {name!r} of the {role} outputs a {type(output).__name__}, not a tensor",
                        fix="name a layer whose output is one tensor")
    return output


def _adapter(pair: HintPair) -> nn.Module:
    if pair.adapter == "conv1x1":
        return nn.Conv2d(pair.student_shape[0], pair.teacher_shape[0], kernel_size=1, bias=False)
    if pair.adapter == "linear":
        return nn.Linear(pair.student_shape[0], pair.teacher_shape[0], bias=False)
    return nn.Identity()
