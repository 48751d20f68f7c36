"""The fused constrained step on CUDA, in Triton: the GPU twin of ``csrc/fused_step.cpp``.

Same math, same arguments (``adam_`` / ``sgd_``), same state in torch's own format, for each weight ``w`` with
gradient ``g`` (per tensor, or per row ``w_i``)::

    g ← g − (⟨g, w⟩ / ‖w‖²) · w         (if project)
    w, state ← Adam / AdamW / SGD update  (torch.optim's math: weight_decay, amsgrad, maximize; momentum,
                                          dampening, nesterov)
    w ← w · (target / ‖w‖)              (if retract)

Math in fp32 for fp32 and bf16 weights (state in the weights' dtype), a non-finite coefficient or scale replaced
by the value that leaves the tensor (row) as it is (0, 1), as in the reference.

**Multi-tensor launches.** All the tensors of one call that share a device, a dtype and (Adam) where ``step`` lives
are updated by a fixed, small number of launches, whatever their number, as torch's fused optimizers do: each
program reads from a device table which tensor and which tile of it is its work, and the tensors' addresses and
sizes (int64 tables: ``w, a, b, x, step, target`` addresses per tensor, the gradients' in a table of their own; rows
and row length, or size, span length and partial-sum offset). The tables are built on the host, copied to the device
without a synchronisation (pinned memory, ``non_blocking``) and cached in three levels: the layout (the task and
size tables, the large part) keyed on the weights' shapes and alignment; the plan (the address table, 64 bytes per
tensor, and the partial sums) keyed on every address but the gradients' and on the weights' and gradients' layouts,
rebuilt when a weight or state tensor moves (a reloaded state); the gradient table (8 bytes per tensor), replaced
when a gradient is a new tensor at another address (after ``zero_grad(set_to_none=True)``, torch's default, when the
allocator does not hand back the same blocks). Launches per call:

* **per row**: one per row-length class in use (a power of two from 16 to ``ONE_CHUNK_MAX``, or longer; with or
  without 16-byte alignment): at most 2 × 10 whatever the number of tensors (ResNet-18 and -50: 9; ViT-B: 2).
  A program takes a tile of rows of one tensor. A row of up to ``ONE_CHUNK_MAX`` elements is loaded once: the dot
  and ‖w‖², the update and the new norm in registers, and ``w`` stored once, already rescaled (one rounding).
  A longer row is walked three times by its program (dot; update, storing the new norm's squares; rescale):
  the second and third walks mostly hit the cache;
* **per tensor**: three (six when some tensors are 16-byte aligned and others not), each program one
  contiguous span of one tensor (at most ``MAX_PROGRAMS`` spans per tensor): (1) each program writes its span's
  ⟨g, w⟩ and ‖w‖² to its tensor's slots of a small fp32 buffer of partials; (2) each program sums all its
  tensor's partials in the same order (so every program of a tensor gets the same coefficient: deterministic,
  no atomics), updates its span and writes the span's new ‖w‖²; (3) each program sums those and rescales its
  span. Without projection (1) is skipped, without retraction (3). Extra traffic over the base step: one read
  of ``g`` and ``w`` (1) and one read and write of ``w`` (3), as on CPU; the partials are 12 bytes per program.

No host synchronisation. Adam's ``step``: where it lives on the weights' device (torch's ``fused=True`` or
``capturable=True``), all the steps are incremented by one ``torch._foreach_add_`` and each program reads its
tensor's and computes the bias corrections itself (in fp64); where torch keeps it on the CPU (its default
``foreach`` / single-tensor Adam on CUDA), it is read on the host, as torch's own step does, and the bias
corrections are passed as numbers (reading a CPU tensor does not wait for the GPU; tensors whose steps differ
take separate launches).

Hyper-parameters are Python numbers (``lawn.constraint.fused_step`` routes a group here only then). With
``TRITON_INTERPRET=1`` set before this module is imported, the kernels run in Triton's interpreter on CPU
tensors (the tests do that).
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl

ONE_CHUNK_MAX = 4096  # longest row held in registers whole (one load, one store)
TILE = 2048  # elements per program when rows are short (several rows per program)
CHUNK = 2048  # elements per loop iteration for long rows, and per tensor
FMA = True  # a * b + c as one fused multiply-add (as nvcc does for torch's kernels); said explicitly
MAX_PROGRAMS = 1024  # per tensor: at most this many spans (programs) for one tensor (partials summed at once)
PLANS = 64  # launch plans kept (one per set of tensors and granularity seen recently)
_DTYPES = (torch.float32, torch.bfloat16)
_TL = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float64: tl.float64}
# int64 slots per tensor in the address table: w, (unused), a, b, x, step, target, (unused); the gradients'
# addresses have a table of their own (they move more often: a new tensor after each zero_grad)
ADDRESSES = 8
SIZES = 4  # int64 slots per tensor in the size table: rows, cols (per row); n, chunks, spans, partials (per tensor)
_W, _G, _A, _B, _X, _STEP, _TARGET = range(7)


# ----------------------------------------------------------------------------- device functions
@triton.jit
def _pointer(table, i, DT: tl.constexpr, VEC: tl.constexpr):
    """The address ``table[i]`` as a pointer to ``DT``; 16-byte aligned if ``VEC > 1``."""
    p = tl.load(table + i).to(tl.pointer_type(DT), bitcast=True)
    if VEC > 1:
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def _address(table, k, slot: tl.constexpr, DT: tl.constexpr, VEC: tl.constexpr):
    """Tensor ``k``'s pointer in ``slot`` of the address table (8 slots a tensor: ``w, -, a, b, x, step, target,
    -``)."""
    return _pointer(table, k * 8 + slot, DT, VEC)


@triton.jit
def _put(ptr, offs, value, mask):
    """Store ``value`` at ``ptr + offs`` in the pointee's dtype; return the value stored, as fp32."""
    stored = value.to(ptr.dtype.element_ty)
    tl.store(ptr + offs, stored, mask=mask)
    return stored.to(tl.float32)


@triton.jit
def _adam_step_size(step_ptr, lr, log2_beta1, log2_beta2, step_size, bias_correction2_sqrt, STEP_ON_DEVICE):
    """``lr / (1 − β₁ᵗ)`` and ``√(1 − β₂ᵗ)``: from ``step`` on the device (fp64), else the host's numbers."""
    if STEP_ON_DEVICE:
        t = tl.load(step_ptr).to(tl.float64)
        size = (lr / (1.0 - tl.exp2(t * log2_beta1))).to(tl.float32)
        root = tl.sqrt((1.0 - tl.exp2(t * log2_beta2)).to(tl.float32))
    else:
        size = step_size
        root = bias_correction2_sqrt
    return size, root


@triton.jit
def _update(
    w, g, c, offs, mask, a_ptr, b_ptr, x_ptr,
    sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, bias_correction2_sqrt,
    momentum, one_minus_dampening,
    ADAM, AMSGRAD, MOMENTUM, FIRST, NESTEROV,
):  # fmt: skip
    """The new weights (fp32, not stored; 0 where masked) from ``w``, ``g`` (fp32) projected with coefficient
    ``c``; stores the state (Adam: ``a`` = exp_avg, ``b`` = exp_avg_sq, ``x`` = max_exp_avg_sq; SGD: ``a`` =
    momentum_buffer), each value rounded once and used as stored, as csrc/fused_step.cpp does."""
    gi = (g - c * w) * sign + w * weight_decay
    if ADAM:
        m = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = _put(a_ptr, offs, m + one_minus_beta1 * (gi - m), mask)
        v = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = _put(b_ptr, offs, v * beta2 + one_minus_beta2 * gi * gi, mask)
        if AMSGRAD:
            v_max = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            v = _put(x_ptr, offs, tl.maximum(v_max, v), mask)
        new = w * decay - step_size * m / (tl.sqrt(v) / bias_correction2_sqrt + eps)
    else:
        if MOMENTUM:
            if FIRST:
                buf = gi
            else:
                buf = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32) * momentum + gi * one_minus_dampening
            buf = _put(a_ptr, offs, buf, mask)
            if NESTEROV:  # noqa: SIM108  (a constexpr branch: one side is compiled)
                d = gi + buf * momentum
            else:
                d = buf
        else:
            d = gi
        new = w - d * lr
    return tl.where(mask, new, 0.0)


# ----------------------------------------------------------------------------- kernels
@triton.jit
def _rows_kernel(
    task_ptr, address_ptr, grad_ptr, size_ptr,
    sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, bias_correction2_sqrt,
    log2_beta1, log2_beta2, momentum, one_minus_dampening,
    DT: tl.constexpr, STEP_DT: tl.constexpr, VEC: tl.constexpr,
    ADAM: tl.constexpr, AMSGRAD: tl.constexpr, MOMENTUM: tl.constexpr, FIRST: tl.constexpr,
    NESTEROV: tl.constexpr, STEP_ON_DEVICE: tl.constexpr, PROJECT: tl.constexpr, RETRACT: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr,
):  # fmt: skip
    """Task ``pid`` = (tensor ``k``, tile ``t``): rows ``[t · ROWS, (t + 1) · ROWS)`` of the ``rows × cols``
    weight ``k`` (row ``r``: elements ``[r · cols, (r + 1) · cols)`` of its memory): projection, update,
    retraction."""
    pid = tl.program_id(0).to(tl.int64)
    k = tl.load(task_ptr + 2 * pid)
    tile = tl.load(task_ptr + 2 * pid + 1)
    w_ptr = _address(address_ptr, k, 0, DT, VEC)
    g_ptr = _pointer(grad_ptr, k, DT, VEC)
    a_ptr = _address(address_ptr, k, 2, DT, VEC)
    b_ptr = _address(address_ptr, k, 3, DT, VEC)
    x_ptr = _address(address_ptr, k, 4, DT, VEC)
    target_ptr = _address(address_ptr, k, 6, tl.float32, 1)
    rows = tl.load(size_ptr + 4 * k)
    cols = tl.load(size_ptr + 4 * k + 1)
    if VEC > 1:
        cols = tl.multiple_of(cols, VEC)
    if ADAM:
        size, root = _adam_step_size(
            _address(address_ptr, k, 5, STEP_DT, 1), lr, log2_beta1, log2_beta2, step_size, bias_correction2_sqrt,
            STEP_ON_DEVICE,
        )  # fmt: skip
    else:
        size = step_size
        root = bias_correction2_sqrt
    row = tile * ROWS + tl.arange(0, ROWS)
    row_ok = row < rows
    start = row[:, None] * cols  # (ROWS, 1)
    col = tl.arange(0, BLOCK)[None, :]  # (1, BLOCK)
    c = tl.zeros((ROWS,), dtype=tl.float32)
    scale = tl.full((ROWS,), 1.0, dtype=tl.float32)
    if ONE_CHUNK:  # the whole row in registers: one load, one store
        mask = row_ok[:, None] & (col < cols)
        offs = start + col
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if PROJECT:
            c = tl.sum(g * w, axis=1) / tl.sum(w * w, axis=1)
            c = tl.where(c - c == 0.0, c, 0.0)  # finite (x − x is NaN for inf, NaN), else 0
        new = _update(
            w, g, c[:, None], offs, mask, a_ptr, b_ptr, x_ptr,
            sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, size, root,
            momentum, one_minus_dampening, ADAM, AMSGRAD, MOMENTUM, FIRST, NESTEROV,
        )  # fmt: skip
        if RETRACT:
            target = tl.load(target_ptr + row, mask=row_ok, other=1.0)
            scale = target / tl.sqrt(tl.sum(new * new, axis=1))
            scale = tl.where(scale - scale == 0.0, scale, 1.0)  # finite, else 1
        tl.store(w_ptr + offs, (new * scale[:, None]).to(DT), mask=mask)
    else:  # a long row: dot; update (summing the stored weights' squares); rescale
        if PROJECT:
            dot = tl.zeros((ROWS,), dtype=tl.float32)
            sq = tl.zeros((ROWS,), dtype=tl.float32)
            for first in range(0, cols, BLOCK):
                mask = row_ok[:, None] & (first + col < cols)
                offs = start + first + col
                w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                dot += tl.sum(g * w, axis=1)
                sq += tl.sum(w * w, axis=1)
            c = dot / sq
            c = tl.where(c - c == 0.0, c, 0.0)
        new_sq = tl.zeros((ROWS,), dtype=tl.float32)
        for first in range(0, cols, BLOCK):
            mask = row_ok[:, None] & (first + col < cols)
            offs = start + first + col
            w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            new = _update(
                w, g, c[:, None], offs, mask, a_ptr, b_ptr, x_ptr,
                sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, size, root,
                momentum, one_minus_dampening, ADAM, AMSGRAD, MOMENTUM, FIRST, NESTEROV,
            )  # fmt: skip
            new = _put(w_ptr, offs, new, mask)
            new_sq += tl.sum(new * new, axis=1)
        if RETRACT:
            target = tl.load(target_ptr + row, mask=row_ok, other=1.0)
            scale = target / tl.sqrt(new_sq)
            scale = tl.where(scale - scale == 0.0, scale, 1.0)
            tl.debug_barrier()  # the stores of the update, before this program reads them back
            for first in range(0, cols, BLOCK):
                mask = row_ok[:, None] & (first + col < cols)
                offs = start + first + col
                w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                tl.store(w_ptr + offs, (w * scale[:, None]).to(DT), mask=mask)


@triton.jit
def _span(task_ptr, size_ptr, VEC: tl.constexpr):
    """Task ``pid`` of a per-tensor launch: tensor ``k``, its size ``n``, chunks per span, its number of spans,
    the offset of its partials, and this program's span ``s``."""
    pid = tl.program_id(0).to(tl.int64)
    k = tl.load(task_ptr + 2 * pid)
    s = tl.load(task_ptr + 2 * pid + 1)
    n = tl.load(size_ptr + 4 * k)
    if VEC > 1:
        n = tl.multiple_of(n, VEC)
    chunks = tl.load(size_ptr + 4 * k + 1)
    spans = tl.load(size_ptr + 4 * k + 2)
    part = tl.load(size_ptr + 4 * k + 3)
    return k, n, chunks, spans, part, s


@triton.jit
def _tensor_dot_kernel(task_ptr, address_ptr, grad_ptr, size_ptr, part_ptr, DT: tl.constexpr, VEC: tl.constexpr,
                       BLOCK: tl.constexpr):  # fmt: skip
    """Pass 1: span ``s`` of tensor ``k``: its ⟨g, w⟩ and ‖w‖² into the tensor's partials ``[s]``, ``[S + s]``."""
    k, n, chunks, spans, part, s = _span(task_ptr, size_ptr, VEC)
    w_ptr = _address(address_ptr, k, 0, DT, VEC)
    g_ptr = _pointer(grad_ptr, k, DT, VEC)
    start = s * chunks * BLOCK
    dot = tl.zeros((BLOCK,), dtype=tl.float32)
    sq = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, chunks):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dot += g * w
        sq += w * w
    tl.store(part_ptr + part + s, tl.sum(dot, axis=0))
    tl.store(part_ptr + part + spans + s, tl.sum(sq, axis=0))


@triton.jit
def _tensor_update_kernel(
    task_ptr, address_ptr, grad_ptr, size_ptr, part_ptr,
    sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, bias_correction2_sqrt,
    log2_beta1, log2_beta2, momentum, one_minus_dampening,
    DT: tl.constexpr, STEP_DT: tl.constexpr, VEC: tl.constexpr,
    ADAM: tl.constexpr, AMSGRAD: tl.constexpr, MOMENTUM: tl.constexpr, FIRST: tl.constexpr,
    NESTEROV: tl.constexpr, STEP_ON_DEVICE: tl.constexpr, PROJECT: tl.constexpr, RETRACT: tl.constexpr,
    BLOCK: tl.constexpr, PARTS: tl.constexpr,
):  # fmt: skip
    """Pass 2: the coefficient from all of pass 1's partials of tensor ``k`` (summed in the same order by each of
    its programs), the update of span ``s``, and the span's new ‖w‖² (of the stored weights) into the tensor's
    partials ``[2S + s]``."""
    k, n, chunks, spans, part, s = _span(task_ptr, size_ptr, VEC)
    w_ptr = _address(address_ptr, k, 0, DT, VEC)
    g_ptr = _pointer(grad_ptr, k, DT, VEC)
    a_ptr = _address(address_ptr, k, 2, DT, VEC)
    b_ptr = _address(address_ptr, k, 3, DT, VEC)
    x_ptr = _address(address_ptr, k, 4, DT, VEC)
    if ADAM:
        size, root = _adam_step_size(
            _address(address_ptr, k, 5, STEP_DT, 1), lr, log2_beta1, log2_beta2, step_size, bias_correction2_sqrt,
            STEP_ON_DEVICE,
        )  # fmt: skip
    else:
        size = step_size
        root = bias_correction2_sqrt
    c = 0.0
    if PROJECT:
        j = tl.arange(0, PARTS)
        dot = tl.sum(tl.load(part_ptr + part + j, mask=j < spans, other=0.0), axis=0)
        sq = tl.sum(tl.load(part_ptr + part + spans + j, mask=j < spans, other=0.0), axis=0)
        c = dot / sq
        c = tl.where(c - c == 0.0, c, 0.0)  # finite (x − x is NaN for inf, NaN), else 0
    start = s * chunks * BLOCK
    new_sq = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, chunks):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        new = _update(
            w, g, c, offs, mask, a_ptr, b_ptr, x_ptr,
            sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, size, root,
            momentum, one_minus_dampening, ADAM, AMSGRAD, MOMENTUM, FIRST, NESTEROV,
        )  # fmt: skip
        new = _put(w_ptr, offs, new, mask)
        new_sq += new * new
    if RETRACT:
        tl.store(part_ptr + part + 2 * spans + s, tl.sum(new_sq, axis=0))


@triton.jit
def _tensor_scale_kernel(task_ptr, address_ptr, grad_ptr, size_ptr, part_ptr, DT: tl.constexpr, VEC: tl.constexpr,
                         BLOCK: tl.constexpr, PARTS: tl.constexpr):  # fmt: skip
    """Pass 3: ``target / ‖w‖`` of tensor ``k`` from pass 2's partials, applied to span ``s``."""
    k, n, chunks, spans, part, s = _span(task_ptr, size_ptr, VEC)
    w_ptr = _address(address_ptr, k, 0, DT, VEC)
    target_ptr = _address(address_ptr, k, 6, tl.float32, 1)
    j = tl.arange(0, PARTS)
    new_sq = tl.sum(tl.load(part_ptr + part + 2 * spans + j, mask=j < spans, other=0.0), axis=0)
    scale = tl.load(target_ptr) / tl.sqrt(new_sq)
    scale = tl.where(scale - scale == 0.0, scale, 1.0)  # finite, else 1
    start = s * chunks * BLOCK
    for i in range(0, chunks):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(w_ptr + offs, (w * scale).to(DT), mask=mask)


# ----------------------------------------------------------------------------- launch plans
def _launch(kernel: Any, grid: int, *args: Any, **options: Any) -> None:
    """Every launch of this module goes through here (the tests count them)."""
    kernel[(grid,)](*args, **options)


def _warps(elements: int) -> int:
    """Warps for a program that holds ``elements`` values per live tensor (8 per thread, 4 to 16 warps): for
    sm_90, Adam with amsgrad, 32-64 registers per thread with the alignment hints, up to 180 without, no spills
    but 4 bytes in the fp32 long-row variant (Triton's ptxas, ahead of time)."""
    return min(16, max(4, elements // 256))


def _dense(w: torch.Tensor) -> bool:
    """Contiguous, or channels-last (4-D / 5-D): elements fill one block of memory, dim 0 outermost."""
    last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(w.dim())
    return w.is_contiguous() or (last is not None and w.is_contiguous(memory_format=last))


def _check(w: torch.Tensor, per_row: bool, k: int, **others: torch.Tensor | None) -> None:
    """``w`` dense fp32/bf16 (per row: dim 0 outermost); ``others`` of its dtype, device, shape and strides."""
    if w.dtype not in _DTYPES or not _dense(w):
        raise ValueError(f"param[{k}]: expected a dense float32 or bfloat16 tensor")
    if per_row and w.dim() > 0 and w.size(0) > 1 and w.stride(0) * w.size(0) != w.numel():
        raise ValueError(f"param[{k}]: per row, dim 0 must be the outermost (each row one block of memory)")
    for what, t in others.items():
        if t is not None and (t.dtype, t.device, t.shape, t.stride()) != (w.dtype, w.device, w.shape, w.stride()):
            raise ValueError(f"{what}[{k}]: expected a tensor of the weight's dtype, device, shape and layout")


def _check_target(target: torch.Tensor, w: torch.Tensor, rows: int, k: int) -> None:
    """The target norm(s): ``rows`` contiguous fp32 values on ``w``'s device (as the engine keeps them)."""
    if target.dtype != torch.float32 or target.device != w.device or not target.is_contiguous():
        raise ValueError(
            f"target[{k}]: expected contiguous float32 values on the weight's device ({w.device}), got "
            f"{target.dtype} on {target.device}; convert them once with .to({str(w.device)!r}, torch.float32)"
        )
    if target.numel() != rows:
        raise ValueError(f"target[{k}]: expected {rows} value(s), got {target.numel()}")


@dataclass
class _Entry:
    """One tensor of a call: its index in the caller's lists, the weight, gradient, state and target (``None``:
    not used by this call)."""

    k: int
    w: torch.Tensor
    g: torch.Tensor
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    x: torch.Tensor | None = None
    step: torch.Tensor | None = None
    target: torch.Tensor | None = None

    @functools.cached_property
    def addresses(self) -> list[int]:
        """``w, g, a, b, x, step, target``'s addresses (0 for an unused slot), and padding: the address table's
        row, but for ``g``, which goes to the gradient table."""
        out = [0 if t is None else t.data_ptr() for t in (self.w, self.g, self.a, self.b, self.x, self.step)]
        return out + [0 if self.target is None else self.target.data_ptr(), 0]


_SHAPE = operator.attrgetter("shape")


@dataclass
class _Slots:
    """The tensors of one launch group, slot by slot (``None``: a slot this call does not use), and their indices
    in the caller's lists (for messages)."""

    ks: list[int]
    w: list[torch.Tensor]
    g: list[torch.Tensor]
    a: list[torch.Tensor] | None = None
    b: list[torch.Tensor] | None = None
    x: list[torch.Tensor] | None = None
    step: list[torch.Tensor] | None = None
    target: list[torch.Tensor] | None = None

    def key(self) -> tuple:
        """What a plan depends on: every address but the gradients', and the weights' and gradients' layouts (the
        state must share the weights'; checked when a plan is built, and every step by
        ``lawn.constraint.fused_step``). Built with ``map`` over the lists: about a microsecond per tensor."""
        ptr, stride = torch.Tensor.data_ptr, torch.Tensor.stride
        head = (tuple(map(ptr, self.w)), tuple(map(_SHAPE, self.w)), tuple(map(stride, self.w)))
        head += (tuple(map(stride, self.g)),)
        return head + tuple(None if t is None else tuple(map(ptr, t)) for t in (self.a, self.b, self.x, self.step,
                                                                                 self.target))  # fmt: skip

    def entries(self) -> list[_Entry]:
        """One :class:`_Entry` per tensor (when a plan is built)."""
        others = (self.a, self.b, self.x, self.step, self.target)
        return [
            _Entry(k, self.w[i], self.g[i], *(None if t is None else t[i] for t in others))
            for i, k in enumerate(self.ks)
        ]


@dataclass
class _Launch:
    """One kernel launch of a layout: its grid, task table and compile-time constants; ``role`` is ``rows``,
    ``dot`` (skipped without projection), ``update`` or ``scale`` (skipped without retraction)."""

    role: str
    kernel: Any
    grid: int
    tasks: torch.Tensor  # (grid, 2) int64 on the device: (tensor, tile or span) of each program
    constexprs: dict[str, Any]
    warps: int


@dataclass
class _Layout:
    """What depends only on the tensors' sizes (and alignment): the launches, their tasks, the size table."""

    launches: list[_Launch]
    sizes: torch.Tensor  # (tensors, SIZES) int64 on the device
    partials: int  # fp32 slots a plan needs (per tensor: 3 per span)
    host: torch.Tensor  # what the device table was copied from


@dataclass
class _Plan:
    """A layout with the tensors' addresses (a small table, rebuilt when a storage moves), the gradients'
    addresses (a smaller one, replaced when a gradient moves) and the partials."""

    layout: _Layout
    vecs: list[int]  # each tensor's alignment class in the layout (the gradients must keep it)
    addresses: torch.Tensor  # (tensors, ADDRESSES) int64 on the device
    partials: torch.Tensor
    host: torch.Tensor  # what the address table was copied from
    grad_key: tuple[int, ...]  # the gradients' addresses in `grads`
    grads: torch.Tensor  # (tensors,) int64 on the device
    grads_host: torch.Tensor


_LAYOUTS: dict[tuple, _Layout] = {}  # the oldest entries dropped beyond PLANS (a key is hashed once a call)
_PLANS: dict[tuple, _Plan] = {}


def _tiling() -> tuple[int, ...]:
    return (ONE_CHUNK_MAX, TILE, CHUNK, MAX_PROGRAMS)


def _vec(entry: _Entry, length: int) -> int:
    """Elements per 16 bytes if every address of the tensor is 16-byte aligned and ``length`` (row length, or
    size) a multiple of that (the kernels then tell the compiler so, and it vectorizes), else 1."""
    vec = 16 // entry.w.element_size()
    if length % vec or any(address % 16 for address in entry.addresses[_W : _X + 1]):
        return 1
    return vec


def _device_table(values: list[int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``values`` as int64 on ``device``, and the host tensor they were copied from: on CUDA, pinned memory copied
    without waiting (ordered on the stream before the launches that read it). The caller keeps the host tensor
    as long as the device one: a copy captured in a CUDA graph reads it again at each replay."""
    host = torch.tensor(values, dtype=torch.int64)
    if device.type != "cuda":
        return host.to(device), host
    host = host.pin_memory()
    return host.to(device, non_blocking=True), host


def _length(w: torch.Tensor, per_row: bool) -> int:
    """What the alignment hint needs a multiple of: the row length (per row) or the size (per tensor)."""
    return w.numel() // _rows(w, per_row)


def _layout(shapes: list[tuple[torch.Size, int]], per_row: bool, device: torch.device) -> _Layout:
    """The launches for tensors of these (shape, vec): per row, one per (block, one chunk, vec) class of row
    lengths; per tensor, the three passes per vec class (all dot passes first, then updates, then rescales)."""
    sizes: list[int] = []
    pieces: list[tuple[str, Any, list[int], dict[str, Any], int]] = []  # role, kernel, tasks, constexprs, warps
    parts = 0
    if per_row:
        buckets: dict[tuple[int, bool, int], list[tuple[int, int]]] = {}
        for i, (shape, vec) in enumerate(shapes):
            rows = shape[0] if len(shape) > 0 else 1
            cols = math.prod(shape) // rows
            sizes += [rows, cols, 0, 0]
            if cols <= ONE_CHUNK_MAX:
                block, one_chunk = max(16, triton.next_power_of_2(cols)), True
            else:
                block, one_chunk = CHUNK, False
            buckets.setdefault((block, one_chunk, vec), []).append((i, rows))
        for (block, one_chunk, vec), members in buckets.items():
            most = max(rows for _, rows in members)
            tile = min(triton.next_power_of_2(most), max(1, TILE // block)) if one_chunk else 1
            tasks = [v for i, rows in members for t in range(triton.cdiv(rows, tile)) for v in (i, t)]
            constexprs = {"VEC": vec, "ROWS": tile, "BLOCK": block, "ONE_CHUNK": one_chunk}
            pieces.append(("rows", _rows_kernel, tasks, constexprs, _warps(tile * block)))
    else:
        classes: dict[int, list[int]] = {}
        for i, (shape, vec) in enumerate(shapes):
            n = math.prod(shape)
            chunks = triton.cdiv(triton.cdiv(n, CHUNK), MAX_PROGRAMS)
            spans = triton.cdiv(n, chunks * CHUNK)
            sizes += [n, chunks, spans, parts]
            parts += 3 * spans
            classes.setdefault(vec, []).append(i)
        for vec, members in classes.items():
            tasks = [v for i in members for s in range(sizes[SIZES * i + 2]) for v in (i, s)]
            most = max(sizes[SIZES * i + 2] for i in members)
            options = {"VEC": vec, "BLOCK": CHUNK}
            with_parts = {**options, "PARTS": max(16, triton.next_power_of_2(most))}
            pieces.append(("dot", _tensor_dot_kernel, tasks, options, _warps(CHUNK)))
            pieces.append(("update", _tensor_update_kernel, tasks, with_parts, _warps(CHUNK)))
            pieces.append(("scale", _tensor_scale_kernel, tasks, with_parts, _warps(CHUNK)))
        pieces.sort(key=lambda piece: ("dot", "update", "scale").index(piece[0]))  # each pass over all tensors
    values = list(sizes)
    for piece in pieces:
        values += piece[2]
    table, host = _device_table(values, device)  # one copy: the size table, then each launch's tasks
    launches, at = [], len(sizes)
    for role, kernel, tasks, constexprs, warps in pieces:
        view = table[at : at + len(tasks)]
        launches.append(_Launch(role, kernel, len(tasks) // 2, view, constexprs, warps))
        at += len(tasks)
    return _Layout(launches, table[: len(sizes)], parts, host)


def _keep(cache: dict, key: tuple, value: Any) -> Any:
    """``cache[key] = value``; the oldest entries beyond ``PLANS`` dropped."""
    cache[key] = value
    while len(cache) > PLANS:
        del cache[next(iter(cache))]
    return value


def _plan(slots: _Slots, per_row: bool, check: Callable[[list[_Entry]], None]) -> _Plan:
    """The cached plan for these tensors (one device and dtype): reused while every address and the weights'
    layouts stay the same. When a gradient moves (a new tensor after ``zero_grad``, as torch does by default),
    only the gradient table is replaced (after checking the new gradients). When another storage moves,
    ``check(entries)`` runs and the address table is rebuilt; the layout (the large task tables) is reused if the
    sizes and alignments are the same."""
    w = slots.w[0]
    common = (per_row, w.device, w.dtype, _tiling())
    key = (*common, slots.key())
    grad_key = tuple(map(torch.Tensor.data_ptr, slots.g))
    plan = _PLANS.get(key)
    if plan is not None and grad_key != plan.grad_key:
        if any(vec > 1 and address % 16 for vec, address in zip(plan.vecs, grad_key)):
            plan = None  # a gradient lost the alignment the layout assumes: a new plan
        else:
            _check_grads(slots)
            plan.grads, plan.grads_host = _device_table(list(grad_key), w.device)
            plan.grad_key = grad_key
    if plan is None:
        entries = slots.entries()
        check(entries)
        vecs = [_vec(e, _length(e.w, per_row)) for e in entries]
        shapes = tuple(zip((e.w.shape for e in entries), vecs))
        layout = _LAYOUTS.get((*common, shapes)) or _keep(
            _LAYOUTS, (*common, shapes), _layout(list(shapes), per_row, w.device)
        )
        rows = [v for e in entries for v in e.addresses[:_G] + [0] + e.addresses[_G + 1 :]]  # g: its own table
        addresses, host = _device_table(rows, w.device)
        partials = torch.empty(max(layout.partials, 1), dtype=torch.float32, device=w.device)
        grads, grads_host = _device_table(list(grad_key), w.device)
        plan = _keep(_PLANS, key, _Plan(layout, vecs, addresses, partials, host, grad_key, grads, grads_host))
    return plan


def _check_grads(slots: _Slots) -> None:
    """Each gradient of the weight's dtype, device, shape and layout (strides: in the plan's key already)."""
    device = torch.Tensor.get_device
    if (
        tuple(map(_DTYPE, slots.g)) == tuple(map(_DTYPE, slots.w))
        and tuple(map(_SHAPE, slots.g)) == tuple(map(_SHAPE, slots.w))
        and tuple(map(device, slots.g)) == tuple(map(device, slots.w))
    ):
        return
    for k, w, g in zip(slots.ks, slots.w, slots.g):
        if (g.dtype, g.device, g.shape, g.stride()) != (w.dtype, w.device, w.shape, w.stride()):
            raise ValueError(f"grad[{k}]: expected a tensor of the weight's dtype, device, shape and layout")


def _run(plan: _Plan, hyper: dict[str, float], flags: dict[str, Any], dtype: torch.dtype, step_dtype: torch.dtype,
         device: torch.device) -> None:  # fmt: skip
    """Launch the plan's kernels in order: the projection's and the retraction's passes only when asked for."""
    types = {"DT": _TL[dtype]}
    full = {**hyper, **types, "STEP_DT": _TL[step_dtype], **flags}
    tables = (plan.addresses, plan.grads, plan.layout.sizes)
    with _on_device(device):
        for launch in plan.layout.launches:
            if (launch.role == "dot" and not flags["PROJECT"]) or (launch.role == "scale" and not flags["RETRACT"]):
                continue
            rows = launch.role == "rows"
            arguments = full if launch.role in ("rows", "update") else types
            _launch(
                launch.kernel, launch.grid, launch.tasks, *tables, *(() if rows else (plan.partials,)),
                **arguments, **launch.constexprs, num_warps=launch.warps, enable_fp_fusion=FMA,
            )  # fmt: skip


def _on_device(device: torch.device) -> contextlib.AbstractContextManager:
    """Launch on ``device`` (Triton launches on the current device); nothing to do for CPU (interpreter)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _step_in_kernel(step: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the kernels read Adam's ``step`` themselves (it lives on the weights' device)."""
    return step.device == w.device


def _rows(w: torch.Tensor, per_row: bool) -> int:
    return w.shape[0] if per_row and w.dim() > 0 else 1


def _log2(beta: float) -> float:
    return math.log2(beta) if beta > 0 else -math.inf


_ADAM_STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
_NO_MOMENTUM = {"momentum": 0.0, "one_minus_dampening": 0.0}
_NO_ADAM = {
    "decay": 1.0, "beta2": 0.0, "one_minus_beta1": 0.0, "one_minus_beta2": 0.0, "eps": 0.0, "step_size": 0.0,
    "bias_correction2_sqrt": 1.0, "log2_beta1": 0.0, "log2_beta2": 0.0,
}  # fmt: skip


def _lengths(name: str, n: int, *lists: list) -> None:
    if any(len(t) != n for t in lists):
        raise ValueError(f"{name}: lists differ in length")


def adam_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    targets: list[torch.Tensor],
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
    project: bool,
    retract: bool,
    per_row: bool,
) -> None:
    """In place, for each ``k``: project ``grads[k]`` (if ``project``), one Adam (AdamW if ``decoupled``) step on
    ``params[k]`` with its state, retract onto ``targets[k]`` (if ``retract``). ``steps[k] += 1`` first, as torch
    does (‖w‖ is computed in the kernels, in the same pass). A fixed number of launches per device, dtype and
    place of ``step`` (module docstring)."""
    n = len(params)
    _lengths("adam_", n, grads, exp_avgs, exp_avg_sqs, steps, targets, *([max_exp_avg_sqs] if amsgrad else []))
    common = {
        "sign": -1.0 if maximize else 1.0,
        "weight_decay": 0.0 if decoupled else float(weight_decay),
        "decay": 1.0 - lr * weight_decay if decoupled else 1.0,
        "lr": float(lr),
        "beta2": float(beta2),
        "one_minus_beta1": 1.0 - beta1,
        "one_minus_beta2": 1.0 - beta2,
        "eps": float(eps),
        "log2_beta1": _log2(beta1),
        "log2_beta2": _log2(beta2),
        **_NO_MOMENTUM,
    }
    flags = {"ADAM": True, "AMSGRAD": bool(amsgrad), "MOMENTUM": False, "FIRST": False, "NESTEROV": False}
    flags |= {"PROJECT": bool(project), "RETRACT": bool(retract)}

    def where(w: torch.Tensor, step: torch.Tensor) -> tuple:
        """A CPU ``step`` is read on the host, as torch's own non-capturable step does (no wait on the GPU): its
        value after this call's increment (exact: steps are whole numbers below 2^24)."""
        on_device = _step_in_kernel(step, w)
        return (w.device, w.dtype, step.dtype, on_device, None if on_device else float(step) + 1.0)

    groups = _groups(params, steps, where)
    check = _checker(per_row, _ADAM_STATE)
    plans = []
    for where, ks in groups.items():
        on_device = where[3]
        tensors = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs if amsgrad else None)
        tensors += (steps if on_device else None, targets if retract else None)
        plans.append((where, _plan(_Slots(ks, *_pick(ks, n, tensors)), per_row, check)))
    if steps:  # after the checks, so that a refused call changes nothing
        torch._foreach_add_(steps, 1.0)  # device steps: one op, read by the kernels; CPU steps: on the host
    for (device, dtype, step_dtype, on_device, t), plan in plans:
        hyper = {**common, "step_size": 0.0, "bias_correction2_sqrt": 1.0}
        if not on_device:
            hyper |= {"step_size": lr / (1.0 - beta1**t), "bias_correction2_sqrt": math.sqrt(1.0 - beta2**t)}
        _run(plan, hyper, {**flags, "STEP_ON_DEVICE": on_device}, dtype, step_dtype, device)


_DTYPE = operator.attrgetter("dtype")


def _uniform(values: Any) -> bool:
    return len(set(values)) <= 1


def _groups(params: list[torch.Tensor], others: list[Any], where: Callable[[torch.Tensor, Any], tuple]) -> dict:
    """``where(w, other)`` → the indices of the non-empty weights with that answer (launch groups: one device and
    dtype, and what the kernels take as one compile-time or scalar argument). The usual case, every weight
    non-empty on one device with one dtype and the ``others`` all alike, is found with ``map`` over the lists
    (no Python loop over the tensors)."""
    n = len(params)
    if n == 0:
        return {}
    get_device = torch.Tensor.get_device
    if (
        all(map(torch.Tensor.numel, params))
        and _uniform(map(get_device, params))
        and _uniform(map(_DTYPE, params))
        and (
            _uniform(others)
            if not others or not isinstance(others[0], torch.Tensor)
            else _uniform(map(get_device, others)) and _uniform(map(_DTYPE, others)) and _uniform(map(float, others))
            if others[0].device.type == "cpu"
            else _uniform(map(get_device, others)) and _uniform(map(_DTYPE, others))
        )
    ):
        return {where(params[0], others[0]): list(range(n))}
    groups: dict[tuple, list[int]] = {}
    for k, (w, other) in enumerate(zip(params, others)):
        if w.numel():
            groups.setdefault(where(w, other), []).append(k)
    return groups


def _pick(ks: list[int], n: int, lists: tuple[list[torch.Tensor] | None, ...]) -> list[list[torch.Tensor] | None]:
    """Entries ``ks`` of each list (the list itself when ``ks`` is all of them, the usual case)."""
    if len(ks) == n:
        return list(lists)
    return [None if t is None else [t[k] for k in ks] for t in lists]


def _checker(per_row: bool, state: tuple[str, ...]) -> Callable[[list[_Entry]], None]:
    """The checks of a group's tensors (run when their plan is built): ``state`` names slots ``a, b, x``."""

    def check(entries: list[_Entry]) -> None:
        for e in entries:
            _check(e.w, per_row, e.k, grad=e.g, **dict(zip(state, (e.a, e.b, e.x))))
            if e.target is not None:
                _check_target(e.target, e.w, _rows(e.w, per_row), e.k)

    return check


def sgd_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    first: list[bool],
    targets: list[torch.Tensor],
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
    maximize: bool,
    project: bool,
    retract: bool,
    per_row: bool,
) -> None:
    """In place, for each ``k``: project ``grads[k]`` (if ``project``), one SGD step on ``params[k]``
    (``momentum_buffers[k]``: its buffer, ignored without momentum; ``first[k]``: the buffer is new and takes the
    gradient), retract (if ``retract``). A fixed number of launches per device,
    dtype and value of ``first``."""
    n = len(params)
    _lengths("sgd_", n, grads, momentum_buffers, first, targets)
    has_momentum = momentum != 0.0
    hyper = {
        **_NO_ADAM,
        "sign": -1.0 if maximize else 1.0,
        "weight_decay": float(weight_decay),
        "lr": float(lr),
        "momentum": float(momentum),
        "one_minus_dampening": 1.0 - dampening,
    }
    flags: dict[str, Any] = {"ADAM": False, "AMSGRAD": False, "MOMENTUM": has_momentum, "NESTEROV": bool(nesterov)}
    flags |= {"STEP_ON_DEVICE": False, "PROJECT": bool(project), "RETRACT": bool(retract)}
    groups = _groups(params, first, lambda w, new: (w.device, w.dtype, bool(new) and has_momentum))
    check = _checker(per_row, ("momentum_buffer",))
    tensors = (params, grads, momentum_buffers if has_momentum else None, None, None, None)
    tensors += (targets if retract else None,)
    plans = [(where, _plan(_Slots(ks, *_pick(ks, n, tensors)), per_row, check)) for where, ks in groups.items()]
    for (device, dtype, is_first), plan in plans:
        _run(plan, hyper, {**flags, "FIRST": is_first}, dtype, torch.float32, device)
