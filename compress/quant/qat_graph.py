"""Fake quantization placed exactly where ONNX Runtime will run integer kernels.

The torch model this builds *is* the INT8 model: exported, every fake-quant becomes a
QuantizeLinear/DequantizeLinear pair that ONNX Runtime fuses into QLinearConv, QLinearAdd,
QGemm and friends. The placement follows how ONNX Runtime fuses QDQ graphs:
- every tensor feeding a Conv/Linear or an Add is quantized (uint8, per tensor);
- a ReLU or ReLU6 right after a Conv/Linear/Add is fused: only its output is quantized, with
  zero point 0 (and range within [0, 6] for ReLU6), so ONNX Runtime drops it into the Q;
- data-movement ops (slice, pad, flatten, max-pool, dropout) re-use their input's quantizer,
  so their outputs stay on the same grid and cost no rounding;
- weights are per-channel symmetric int8, or 7-bit (+-64) where the CPU's U8S8 kernel adds
  pairs of products in int16: 255 * 64 * 2 < 32767, so it cannot saturate;
- the logits stay float (ONNX Runtime's QGemm writes float output);
- a Conv/Linear named in `float_layers` stays FP32 (its input is not quantized for it), e.g. the
  first convolution, whose input is the normalised image: one per-tensor uint8 grid cannot hold
  three channels normalised with different means and deviations without losing pixel levels.
"""

from __future__ import annotations

import operator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import fx, nn

from edgepress.core.errors import UserError

ACTIVATION_QMIN, ACTIVATION_QMAX = 0, 255
# "exact" runs the integer arithmetic ONNX Runtime runs (exact int32 accumulation, float32
# requantization); "quantize" is its differentiable approximation, for training.
Mode = Literal["observe", "quantize", "exact", "float"]


class ActivationQuant(nn.Module):
    """Per-tensor uint8 fake quantization with a learned scale (LSQ, Esser et al. 2020)."""

    def __init__(self, *, nonnegative: bool, upper_bound: float | None = None) -> None:
        super().__init__()
        self.nonnegative = nonnegative
        self.upper_bound = upper_bound  # ReLU6: the range may not pass 6, or ONNX Runtime keeps the Clip
        self.scale = nn.Parameter(torch.ones(1))
        self.register_buffer("zero_point", torch.zeros(1))
        self.mode: Mode = "observe"
        self.samples: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "observe":
            flat = x.detach().flatten()
            # A random subsample per batch bounds memory; the percentile needs the shape, not every value.
            self.samples.append(flat[torch.randint(flat.numel(), (20000,))] if flat.numel() > 20000 else flat.clone())
            return x
        if self.mode == "float":
            return x
        if self.mode == "exact":
            scale, zero_point = self.export_params()
            return (torch.clamp(torch.round(x / scale) + zero_point, ACTIVATION_QMIN, ACTIVATION_QMAX) - zero_point) * scale
        numel = x.numel() / max(1, x.shape[0])
        grad_factor = 1.0 / (numel * ACTIVATION_QMAX) ** 0.5
        return torch._fake_quantize_learnable_per_tensor_affine(
            x, self.scale, self.zero_point, ACTIVATION_QMIN, ACTIVATION_QMAX, grad_factor)

    def set_range(self, low: float, high: float) -> None:
        low, high = min(low, 0.0), max(high, 0.0)
        if self.nonnegative:
            low = 0.0
        if self.upper_bound is not None:
            high = min(high, self.upper_bound)
        high = max(high, low + 1e-6)
        scale = (high - low) / (ACTIVATION_QMAX - ACTIVATION_QMIN)
        self.scale.data.fill_(scale)
        self.zero_point.fill_(float(min(ACTIVATION_QMAX, max(ACTIVATION_QMIN, round(-low / scale)))))

    def calibrate(self, *, method: Literal["minmax", "percentile"], percentile: float) -> None:
        if not self.samples:
            raise UserError("a quantizer saw no data during calibration", fix="check the calibration set is not empty")
        values = torch.cat(self.samples).float()
        self.samples = []
        if method == "minmax":
            self.set_range(float(values.min()), float(values.max()))
        else:
            quantiles = torch.tensor([1.0 - percentile / 100.0, percentile / 100.0])
            if values.numel() > 16_000_000:
                values = values[torch.randperm(values.numel())[:16_000_000]]
            low, high = torch.quantile(values, quantiles).tolist()
            self.set_range(low, high)

    def export_params(self) -> tuple[float, int]:
        scale = float(self.scale.detach().abs().clamp_min(1e-9))
        return scale, int(round(float(self.zero_point)))


class ExportActivationQuant(nn.Module):
    """The frozen form: constants, so both exporters emit a plain QuantizeLinear/DequantizeLinear pair."""

    def __init__(self, scale: float, zero_point: int) -> None:
        super().__init__()
        self.scale, self.zero_point = scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.fake_quantize_per_tensor_affine(x, self.scale, self.zero_point, ACTIVATION_QMIN, ACTIVATION_QMAX)


def integer_weight(weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int values of a weight already on its per-channel grid."""
    return torch.round(weight / scale.reshape((-1,) + (1,) * (weight.dim() - 1)))


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def quantize_weight(weight: torch.Tensor, *, weight_qmax: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(fake-quantized weight, per-output-channel scale): symmetric, zero point 0, like ONNX Runtime's."""
    max_abs = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).clamp_min(1e-8)
    scale = (max_abs / weight_qmax).float()
    zero = torch.zeros(weight.shape[0], dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(weight, scale, zero, 0, -weight_qmax, weight_qmax), scale


class _QuantCompute(nn.Module):
    """A Conv/Linear with fake-quantized weights, and its bias on the int32 grid ONNX Runtime rounds it to."""

    def __init__(self, inner: nn.Module, *, weight_qmax: int) -> None:
        super().__init__()
        self.inner, self.weight_qmax = inner, weight_qmax
        # Lists, not submodules: the graph owns the quantizers.
        self._input_quantizer: list[ActivationQuant] = []
        self._output_quantizer: list[ActivationQuant] = []

    def attach_input(self, quantizer: ActivationQuant) -> None:
        self._input_quantizer[:] = [quantizer]

    def attach_output(self, quantizer: ActivationQuant) -> None:
        self._output_quantizer[:] = [quantizer]

    def exact(self, x: torch.Tensor, op) -> torch.Tensor:
        """What QLinearConv/QGemm compute: int32 accumulation, then one float32 multiply and round-to-even."""
        with torch.no_grad():
            input_scale, _ = self._input_quantizer[0].export_params()
            weight, weight_scale = quantize_weight(self.inner.weight, weight_qmax=self.weight_qmax)
            weight_int = integer_weight(weight, weight_scale)
            accumulator_scale = (torch.tensor(input_scale, dtype=torch.float32) * weight_scale).float()
            acc = op(torch.round(x / input_scale).double(), weight_int.double(), None)
            if self.inner.bias is not None:
                bias_int = torch.round(self.inner.bias.detach() / accumulator_scale).double()
                acc = acc + bias_int.reshape((1, -1) + (1,) * (acc.dim() - 2))
            channel = (1, -1) + (1,) * (acc.dim() - 2)
            if not self._output_quantizer:
                return acc.float() * accumulator_scale.reshape(channel)
            output_scale, zero_point = self._output_quantizer[0].export_params()
            multiplier = (accumulator_scale / torch.tensor(output_scale, dtype=torch.float32)).reshape(channel)
            q = torch.clamp(torch.round(acc.float() * multiplier) + zero_point, ACTIVATION_QMIN, ACTIVATION_QMAX)
            return (q - zero_point) * output_scale

    def _exact_mode(self) -> bool:
        return bool(self._input_quantizer) and self._input_quantizer[0].mode == "exact"

    def quantized_parameters(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(fake-quantized weight, its per-channel scale, bias on the int32 grid)."""
        weight, weight_scale = quantize_weight(self.inner.weight, weight_qmax=self.weight_qmax)
        bias = self.inner.bias
        if bias is not None and self._input_quantizer:
            step = self._input_quantizer[0].scale.detach().abs() * weight_scale
            bias = bias + (torch.round(bias / step) * step - bias).detach()
        return weight, weight_scale, bias


class QuantConv2d(_QuantCompute):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.inner
        if self._exact_mode():
            return self.exact(x, lambda a, w, b: F.conv2d(a, w, b, c.stride, c.padding, c.dilation, c.groups))
        weight, _, bias = self.quantized_parameters()
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)


class QuantLinear(_QuantCompute):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._exact_mode():
            return self.exact(x, F.linear)
        weight, _, bias = self.quantized_parameters()
        return F.linear(x, weight, bias)


_RELU = {F.relu, torch.relu, "relu"}
_ADD = {operator.add, torch.add, "add"}
_POOL = {F.adaptive_avg_pool2d, F.avg_pool2d, "mean"}
_MOVE = {torch.flatten, operator.getitem, F.pad, F.max_pool2d, torch.reshape, F.dropout,
         "flatten", "view", "reshape", "contiguous"}


def _kind(node: fx.Node, modules: dict[str, nn.Module]) -> str:
    if node.op in ("placeholder", "output", "get_attr"):
        return node.op
    if node.op == "call_module":
        module = modules[str(node.target)]
        kinds = ((nn.Conv2d, "compute"), (nn.Linear, "compute"), (nn.ReLU, "relu"), (nn.ReLU6, "relu6"),
                 ((nn.AdaptiveAvgPool2d, nn.AvgPool2d), "pool"),
                 ((nn.Identity, nn.Dropout, nn.Flatten, nn.MaxPool2d), "move"))
        for types, kind in kinds:
            if isinstance(module, types):
                return kind
        what = type(module).__name__
    else:
        target = node.target
        if target in _RELU:
            return "relu"
        if target in (F.relu6,) or (target is F.hardtanh and node.args[1:3] == (0.0, 6.0)):
            return "relu6"
        for group, kind in ((_ADD, "add"), (_POOL, "pool"), (_MOVE, "move")):
            if target in group:
                return kind
        what = getattr(target, "__name__", str(target))
    raise UserError(f"QAT cannot place quantization around {what!r} (node {node.name!r})",
                    fix="use the ptq or accuracy_aware_ptq stage for this model, or rewrite that op as Conv/Linear/ReLU/add/pool")


class QatGraph:
    """A BN-folded fx copy of a model with fake quantization inserted; see the module docstring."""

    def __init__(self, model: nn.Module, *, weight_qmax: int, float_layers: tuple[str, ...] = ()) -> None:
        from torch.fx.experimental.optimization import fuse

        model = model.eval()
        try:
            traced = fuse(fx.symbolic_trace(model))  # folds every eval-mode BatchNorm into its Conv
        except Exception as exc:
            raise UserError(f"QAT could not trace the model with torch.fx ({' '.join(str(exc).split())[:160]})",
                            fix="use the ptq or accuracy_aware_ptq stage for this model") from None
        self.weight_qmax = weight_qmax
        self.float_layers = frozenset(float_layers)  # Conv/Linear kept in FP32: no input or weight quantization
        self.module = traced
        self.quantizers: list[ActivationQuant] = []
        self._insert()

    def _new_quantizer(self, *, nonnegative: bool, upper_bound: float | None = None) -> str:
        quantizer = ActivationQuant(nonnegative=nonnegative, upper_bound=upper_bound)
        name = f"qat_act_{len(self.quantizers)}"
        self.module.add_module(name, quantizer)
        self.quantizers.append(quantizer)
        return name

    def _quantize_after(self, node: fx.Node, quantizer: str) -> fx.Node:
        graph = self.module.graph
        with graph.inserting_after(node):
            quantized = graph.call_module(quantizer, (node,))
        node.replace_all_uses_with(quantized, delete_user_cb=lambda user: user is not quantized)
        return quantized

    def _insert(self) -> None:
        gm = self.module
        modules = dict(gm.named_modules())
        on_grid: dict[fx.Node, str] = {}  # node -> the quantizer whose grid its output lies on
        nonnegative: set[fx.Node] = set()

        def place(node: fx.Node, quantizer: str) -> None:
            on_grid[node] = quantizer
            quantized = self._quantize_after(node, quantizer)
            on_grid[quantized] = quantizer  # later nodes read the quantized copy
            if node in nonnegative:
                nonnegative.add(quantized)

        def ensure(arg) -> None:
            if isinstance(arg, fx.Node) and arg not in on_grid:
                place(arg, self._new_quantizer(nonnegative=arg in nonnegative))

        computes: dict[fx.Node, _QuantCompute] = {}
        for node in list(gm.graph.nodes):
            kind = _kind(node, modules)
            users = list(node.users)
            fused_into_relu = len(users) == 1 and _kind(users[0], modules) in ("relu", "relu6")
            if kind == "placeholder" or (kind == "compute" and str(node.target) in self.float_layers):
                pass  # inputs and FP32 layers' outputs are quantized by the consumers that need them
            elif kind == "compute":
                ensure(node.args[0])
                module = modules[str(node.target)]
                wrapper = (QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear)(module, weight_qmax=self.weight_qmax)
                wrapper.attach_input(gm.get_submodule(on_grid[node.args[0]]))
                _replace(gm, str(node.target), wrapper)
                computes[node] = wrapper
                goes_out = all(user.op == "output" for user in users)
                if not fused_into_relu and not goes_out:
                    ensure(node)
                    wrapper.attach_output(gm.get_submodule(on_grid[node]))
            elif kind == "add":
                for arg in node.args[:2]:
                    ensure(arg)
                if not fused_into_relu:
                    ensure(node)
            elif kind in ("relu", "relu6"):
                nonnegative.add(node)
                place(node, self._new_quantizer(nonnegative=True, upper_bound=6.0 if kind == "relu6" else None))
                if node.args[0] in computes and len(node.args[0].users) == 1:
                    computes[node.args[0]].attach_output(gm.get_submodule(on_grid[node]))
            elif kind == "pool":
                ensure(node.args[0])
                if node.args[0] in nonnegative:
                    nonnegative.add(node)
                ensure(node)
            elif kind == "move":
                source = node.args[0]
                if isinstance(source, fx.Node) and source in on_grid:
                    if source in nonnegative:
                        nonnegative.add(node)
                    place(node, on_grid[source])
        gm.graph.lint()
        gm.recompile()

    def set_mode(self, mode: Mode) -> None:
        for quantizer in self.quantizers:
            quantizer.mode = mode

    def calibrate(self, inputs: torch.Tensor, *, method: Literal["minmax", "percentile"], percentile: float,
                  batch_size: int = 64) -> None:
        self.set_mode("observe")
        self.module.eval()
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                self.module(inputs[start:start + batch_size])
        for quantizer in self.quantizers:
            quantizer.calibrate(method=method, percentile=percentile)
        self.set_mode("quantize")

    def frozen_copy(self) -> tuple[fx.GraphModule, dict[bytes, tuple[torch.Tensor, torch.Tensor]]]:
        """An export-ready copy: constant fake-quants, weights already on their int8 grid.

        Returns it with, for every weight, its float bytes -> (int8 values, per-channel scale), so
        the exported graph's float weights can be swapped for int8 initializers."""
        import copy

        frozen = copy.deepcopy(self.module).cpu().eval()
        weights: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        for name, module in list(frozen.named_modules()):
            if isinstance(module, _QuantCompute):
                inner = module.inner
                with torch.no_grad():
                    fake, scale, bias = module.quantized_parameters()
                    inner.weight.copy_(fake)
                    if bias is not None:
                        inner.bias.copy_(bias)
                weights[fake.contiguous().numpy().tobytes()] = (integer_weight(fake, scale).to(torch.int8), scale)
                _replace(frozen, name, inner)
            elif isinstance(module, ActivationQuant):
                _replace(frozen, name, ExportActivationQuant(*module.export_params()))
        frozen.recompile()
        # With grad enabled, fake quantization dispatches to a variant the exporters cannot map.
        frozen.requires_grad_(False)
        return frozen, weights
