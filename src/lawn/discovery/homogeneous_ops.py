"""Which autograd operations are positively homogeneous, input by input: the allow-list discovery walks by.

An operation ``y = f(x_1, ..., x_n)`` lets homogeneity through along input ``i`` when it is linear or
positively homogeneous in the inputs (``f(αx) = α^d f(x)`` for ``α > 0``): matmul, convolution and embedding
lookups (linear in the activation *and* in the weight), ``mul`` (bilinear), ``relu``, ``leaky_relu``, max /
average pooling, ``sum``/``mean``/``max``, every reshape / index / concat, dropout, copies, and addition (a
residual sum of homogeneous paths, or a bias). ``x / y`` passes along ``x`` only; attention ``softmax(q kᵀ)
v`` only along ``v``; ``maximum``/``minimum``/``fmax``/``fmin`` of two tracked values, or of a value and zeros
(a ReLU). Everything else breaks homogeneity, and so does **every operation not named here**:
normalization layers, ``gelu``/``silu``/``tanh``/``sigmoid``/``softmax``/``exp``/``log``, norms, ``rsqrt``,
clipping (``clamp(min=c)``, ``maximum(h, c)`` with ``c ≠ 0``), thresholds (``where(h > t, h, 0)``: the mask
moves with the scale, and ``where`` is not told apart from a fixed mask, so it always breaks), custom autograd
Functions, compiled regions. An unknown operation is thus treated as breaking (the
safe side: it can only make discovery choose fewer weights).

Nodes are named after their autograd class without the ``Backward<n>`` suffix (``AddmmBackward0`` →
``Addmm``).
"""

from __future__ import annotations

import re

import torch

_SUFFIX = re.compile(r"Backwards?\d*$")

#: every input of these passes homogeneity through
_EVERY_INPUT = frozenset(
    {
        # linear maps (linear in each input: the activation and the weight)
        "Mm", "Bmm", "Mv", "Dot", "Vdot", "Addmm", "Addmv", "Addbmm", "Baddbmm", "Addr", "Kron",
        "Convolution", "MkldnnConvolution", "CudnnConvolution", "CudnnConvolutionTranspose",
        "ConvDepthwise2D", "SlowConv2D", "SlowConv3D", "SlowConvDilated2D", "SlowConvTranspose2D",
        "SlowConvTranspose3D", "Linear", "MkldnnLinear", "Embedding", "EmbeddingBag", "Mul", "Neg",
        "Sum", "Mean", "Nansum", "Cumsum", "Trace", "Addcmul",
        # sums: residual addition, biases, constants (strict mode looks at the summands, see ADDITIVE_INPUTS)
        "Add", "Sub", "Rsub", "IndexAdd", "ScatterAdd",
        # positively homogeneous pointwise maps and selections
        "Relu", "LeakyRelu", "RreluWithNoise", "Prelu", "PreluKernel", "Abs",
        "Max", "Min", "Amax", "Amin", "Topk", "Sort", "Kthvalue", "Median", "NanMedian",
        # pooling and resampling
        "MaxPool2DWithIndices", "MaxPool3DWithIndices", "AvgPool2D", "AvgPool3D", "AdaptiveAvgPool2D",
        "AdaptiveAvgPool3D", "AdaptiveMaxPool2D", "AdaptiveMaxPool3D", "MaxUnpool2D", "MaxUnpool3D",
        "UpsampleNearest1D", "UpsampleNearest2D", "UpsampleNearest3D", "UpsampleNearestExact1D",
        "UpsampleNearestExact2D", "UpsampleNearestExact3D", "UpsampleLinear1D", "UpsampleBilinear2D",
        "UpsampleBicubic2D", "UpsampleTrilinear3D", "PixelShuffle", "PixelUnshuffle", "ChannelShuffle",
        # layout: views, indexing, concatenation, padding with zeros, copies, casts
        "View", "UnsafeView", "ReshapeAlias", "AsStrided", "Expand", "Permute", "Transpose", "T",
        "Squeeze", "Unsqueeze", "Select", "Slice", "Narrow", "Index", "IndexSelect", "Gather", "Take",
        "MaskedSelect", "IndexPut", "Scatter", "Split", "SplitWithSizes", "Unbind", "Cat", "Stack",
        "Repeat", "Roll", "Flip", "Rot90", "Diagonal", "DiagEmbed", "Tril", "Triu", "Unfold", "Im2Col",
        "Col2Im", "ConstantPadNd", "ReflectionPad1D", "ReflectionPad2D", "ReflectionPad3D",
        "ReplicationPad1D", "ReplicationPad2D", "ReplicationPad3D", "Clone", "ToCopy", "Alias", "Copy",
        "CopySlices", "NativeDropout", "FusedDropout",
    }
)  # fmt: skip

#: only the listed inputs pass homogeneity through (the others break it)
_SOME_INPUTS: dict[str, frozenset[int]] = {"Div": frozenset({0})}  # x / y: along x, not y
#: attention kernels, any backend: ``softmax(q kᵀ / √d) v`` is linear in v (input 2), not in q or k
_SOME_INPUTS_BY_PREFIX: dict[str, frozenset[int]] = {"ScaledDotProduct": frozenset({2})}

#: summands of additive nodes (full autograd names): in strict mode a summand that carries no weight — a bias,
#: a constant, the raw input — makes the sum affine rather than homogeneous, so the node breaks
ADDITIVE_INPUTS: dict[str, tuple[int, ...]] = {
    "AddBackward0": (0, 1),
    "SubBackward0": (0, 1),
    "RsubBackward0": (0, 1),
    "AddcmulBackward0": (0,),
    "AddmmBackward0": (0,),
    "AddmvBackward0": (0,),
    "AddbmmBackward0": (0,),
    "BaddbmmBackward0": (0,),
    "AddrBackward0": (0,),
    "IndexAddBackward0": (0, 1),
    "ScatterAddBackward0": (0, 1),
    "ConvolutionBackward0": (2,),
    "LinearBackward0": (2,),
    "MkldnnLinearBackward0": (2,),
}
#: layers whose bias input is optional: an untracked bias there may simply be absent
_OPTIONAL_BIAS = frozenset({"ConvolutionBackward0", "LinearBackward0", "MkldnnLinearBackward0"})
#: adding a Python number: always a constant shift (breaks in strict mode)
SCALAR_SHIFTS = frozenset({"AddBackward1", "SubBackward1", "RsubBackward1"})


def op_name(node: torch.autograd.graph.Node) -> str:
    """``AddmmBackward0`` → ``Addmm``; leaves are ``AccumulateGrad``."""
    name = type(node).__name__
    return name if name == "AccumulateGrad" else _SUFFIX.sub("", name)


def _is_relu_clamp(node: torch.autograd.graph.Node) -> bool:
    """``clamp(x, min=0)`` is a ReLU; any other clamp is not homogeneous."""
    return getattr(node, "_saved_min", None) == 0 and getattr(node, "_saved_max", None) is None


#: elementwise max / min of two inputs: homogeneous if both are tracked, or the untracked one is all zeros
_PAIRWISE_EXTREMA = frozenset({"Maximum", "Minimum", "Fmax", "Fmin"})


def _is_relu_like(node: torch.autograd.graph.Node) -> bool:
    """``maximum(h, c)`` (and min, fmax, fmin) is positively homogeneous iff ``c`` is tracked too or is zero:
    ``max(αh, c) = α max(h, c)`` for all ``α > 0`` only when ``c = 0``."""
    for (child, _), saved in zip(node.next_functions, ("_saved_self", "_saved_other")):
        if child is None:
            constant = getattr(node, saved, None)
            if not isinstance(constant, torch.Tensor) or bool(constant.detach().any()):
                return False
    return True


def homogeneous_inputs(node: torch.autograd.graph.Node) -> frozenset[int] | None:
    """Input positions of ``node`` along which the operation is positively homogeneous.

    ``None`` means every input; an empty set means the node breaks homogeneity (unknown nodes included).
    """
    op = op_name(node)
    if op in _EVERY_INPUT:
        return None
    if op in _PAIRWISE_EXTREMA:
        return None if _is_relu_like(node) else frozenset()
    if op in ("Clamp", "ClampMin"):
        return None if _is_relu_clamp(node) else frozenset()
    if op in _SOME_INPUTS:
        return _SOME_INPUTS[op]
    for prefix, inputs in _SOME_INPUTS_BY_PREFIX.items():
        if op.startswith(prefix):
            return inputs
    return frozenset()


def has_constant_summand(node: torch.autograd.graph.Node) -> bool:
    """Whether an additive ``node`` adds something autograd does not track (a buffer, the input, a number)."""
    name = type(node).__name__
    if name in SCALAR_SHIFTS:
        return True
    summands = ADDITIVE_INPUTS.get(name, ())
    edges = node.next_functions
    for i in summands:
        if i < len(edges) and edges[i][0] is None:
            if name in _OPTIONAL_BIAS and getattr(node, "_saved_bias_sym_sizes_opt", None) is None:
                continue  # a layer without bias, not a constant bias
            return True
    return False
