"""FLOP counting with fvcore's FlopCountAnalysis, plus the handles it lacks.

Convention (fvcore's): one multiply-add = one FLOP. `torch.utils.flop_counter.FlopCounterMode`
counts 2 per multiply-add; a test checks that the two agree after converting.

fvcore has no handle for `aten::scaled_dot_product_attention` (every attention product would count
as zero) nor for `aten::_convolution_mode` (the SigLIP patch embedding, a Conv2d with
padding="valid", traces to it), so both are registered here. Attention is counted over the full
Lq x Lk rectangle (QK^T and AV), causal or not, as FlopCounterMode also does.
Ops that remain unsupported and are not elementwise, indexing or tiny reductions are returned in
`FlopCount.unsupported` so that every table can list them.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

# Unsupported ops that cost O(elements) (or nothing): not worth a handle, not reported.
ELEMENTWISE_OPS = {
    "add", "add_", "sub", "rsub", "mul", "mul_", "div", "neg", "reciprocal", "rsqrt", "sqrt", "pow", "exp",
    "log", "cos", "sin", "tanh", "sigmoid", "silu", "gelu", "softmax", "log_softmax", "mean", "sum", "where",
    "le", "lt", "ne", "abs", "bucketize", "embedding", "new_ones", "masked_fill_", "fill_", "ones_like",
    "expand_as", "repeat", "scatter", "scatter_", "any", "all", "logical_not", "cumsum", "sign", "float",
    "clone", "__or__", "__ior__", "bitwise_or", "min", "maximum", "minimum", "rand", "uniform_", "log_",
    "empty_like", "zeros_like", "isinf", "isnan", "argmax", "linalg_vector_norm", "norm",
}


def _fvcore():
    """Import fvcore quietly (its import uses torch.jit.script, which newer torch deprecates)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import fvcore.nn
        import fvcore.nn.jit_handles
    return fvcore.nn


def _shape(value) -> list[int]:
    return _fvcore().jit_handles.get_shape(value)


def sdpa_flop_jit(inputs, outputs) -> int:
    """aten::scaled_dot_product_attention(query (B,H,Lq,E), key (B,Hk,Lk,E), value (B,Hk,Lk,Ev), ...).

    QK^T: B*H*Lq*Lk*E multiply-adds; attention x V: B*H*Lq*Lk*Ev. Grouped-query attention
    (Hk < H) costs the same: every query head still attends over Lk keys.
    """
    q, k, v = _shape(inputs[0]), _shape(inputs[1]), _shape(inputs[2])
    *batch, lq, e = q
    lk, ev = k[-2], v[-1]
    b_h = 1
    for d in batch:
        b_h *= d
    return b_h * lq * lk * (e + ev)


def conv_mode_flop_jit(inputs, outputs) -> int:
    """aten::_convolution_mode(input, weight, bias, stride, padding: str, dilation, groups)."""
    return _fvcore().jit_handles.conv_flop_count(_shape(inputs[0]), _shape(inputs[1]), _shape(outputs[0]), transposed=False)


EXTRA_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::_convolution_mode": conv_mode_flop_jit,
}


@dataclass
class FlopCount:
    total: int
    by_operator: dict[str, int] = field(default_factory=dict)
    unsupported: dict[str, int] = field(default_factory=dict)  # op -> calls, non-elementwise only

    def __sub__(self, other: "FlopCount") -> "FlopCount":
        ops = {k: self.by_operator.get(k, 0) - other.by_operator.get(k, 0)
               for k in set(self.by_operator) | set(other.by_operator)}
        return FlopCount(self.total - other.total, {k: v for k, v in ops.items() if v},
                         dict(self.unsupported))


class _Traced(torch.nn.Module):
    """Wrap a function of tensors so that fvcore can trace it; `modules` are those it calls."""

    def __init__(self, fn: Callable, modules: Sequence[torch.nn.Module] = ()):
        super().__init__()
        self.fn = fn
        self.used = torch.nn.ModuleList(modules)  # their parameters are inputs, not constants

    def forward(self, *args):
        return self.fn(*args)


def count_flops(fn: Callable, *inputs: torch.Tensor, modules: Sequence[torch.nn.Module] = ()) -> FlopCount:
    """FLOPs (multiply-adds) of `fn(*inputs)` by fvcore, with the extra handles registered.

    `modules`: the nn.Modules `fn` calls (so that their parameters are traced as parameters).
    """
    analysis = _fvcore().FlopCountAnalysis(_Traced(fn, modules), tuple(inputs)).set_op_handle(**EXTRA_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    analysis.tracer_warnings("none")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        total = int(analysis.total())
        by_op = {k: int(v) for k, v in analysis.by_operator().items() if v}
        unsupported = {
            op: n for op, n in analysis.unsupported_ops().items()
            if op.removeprefix("aten::").removeprefix("prim::") not in ELEMENTWISE_OPS
        }
    return FlopCount(total, by_op, unsupported)


def flop_counter_mode_total(fn: Callable, *inputs: torch.Tensor) -> int:
    """PyTorch's own count (2 FLOPs per multiply-add), for cross-checking."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        fn(*inputs)
    return int(counter.get_total_flops())
