"""The fused constrained step on CUDA, in Triton: the GPU twin of ``csrc/fused_step.cpp``.

Same math, same arguments (``adam_`` / ``sgd_``), same state in torch's own format, for each weight ``w`` with
gradient ``g`` (per tensor, or per row ``w_i``)::

    g ← g − (⟨g, w⟩ / ‖w‖²) · w         (if project)
    w, state ← Adam / AdamW / SGD update  (torch.optim's math: weight_decay, amsgrad, maximize; momentum,
                                          dampening, nesterov)
    w ← w · (target / ‖w‖)              (if retract)

Math in fp32 for fp32 and bf16 weights (state in the weights' dtype), a non-finite coefficient or scale replaced
by the value that leaves the tensor (row) as it is (0, 1), as in the reference.

Passes over memory (Adam alone: read w, g, m, v; write w, m, v):

* **per row**, one program per tile of rows. A row of up to ``ONE_CHUNK_MAX`` elements is loaded once: the dot
  and ‖w‖², the update and the new norm in registers, and ``w`` stored once, already rescaled (one rounding).
  A longer row is walked three times by its program (dot; update, storing the new norm's squares; rescale):
  the second and third walks mostly hit the cache;
* **per tensor**, up to ``SMALL_TENSOR`` elements: one program, as a single row;
* **per tensor**, larger: three kernels over the same spans (at most ``MAX_PROGRAMS`` programs, each a
  contiguous span): (1) each program writes its span's ⟨g, w⟩ and ‖w‖² to a small fp32 buffer of partials;
  (2) each program sums all the partials in the same order (so every program gets the same coefficient:
  deterministic, no atomics), updates its span and writes the span's new ‖w‖²; (3) each program sums those and
  rescales its span. Extra traffic over the base step: one read of ``g`` and ``w`` (1) and one read and write of
  ``w`` (3), as on CPU; the partials are 12 bytes per program.

No host synchronisation. Adam's ``step``: where it lives on the weights' device (torch's ``fused=True`` or
``capturable=True``), it is incremented by one device op per call (``torch._foreach_add_``) and each kernel
reads it and computes the bias corrections itself (in fp64); where torch keeps it on the CPU (its default
``foreach`` / single-tensor Adam on CUDA), it is incremented and read on the host, as torch's own step does,
and the bias corrections are passed as numbers (reading a CPU tensor does not wait for the GPU).

Hyper-parameters are Python numbers (``lawn.constraint.fused_step`` routes a group here only then). With
``TRITON_INTERPRET=1`` set before this module is imported, the kernels run in Triton's interpreter on CPU
tensors (the tests do that).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
import triton
import triton.language as tl

ONE_CHUNK_MAX = 4096  # longest row held in registers whole (one load, one store)
TILE = 2048  # elements per program when rows are short (several rows per program)
CHUNK = 2048  # elements per loop iteration for long rows and large tensors
FMA = True  # a * b + c as one fused multiply-add (as nvcc does for torch's kernels); said explicitly
SMALL_TENSOR = 32768  # per tensor, up to this many elements: one program
MAX_PROGRAMS = 1024  # per tensor, larger: at most this many programs (partials one program sums at once)
_DTYPES = (torch.float32, torch.bfloat16)


# ----------------------------------------------------------------------------- device functions
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
    w_ptr, g_ptr, a_ptr, b_ptr, x_ptr, step_ptr, target_ptr, rows, cols,
    sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, bias_correction2_sqrt,
    log2_beta1, log2_beta2, momentum, one_minus_dampening,
    ADAM: tl.constexpr, AMSGRAD: tl.constexpr, MOMENTUM: tl.constexpr, FIRST: tl.constexpr,
    NESTEROV: tl.constexpr, STEP_ON_DEVICE: tl.constexpr, PROJECT: tl.constexpr, RETRACT: tl.constexpr,
    ROWS: tl.constexpr, BLOCK: tl.constexpr, ONE_CHUNK: tl.constexpr,
):  # fmt: skip
    """Rows ``[pid · ROWS, (pid + 1) · ROWS)`` of a ``rows × cols`` weight (row ``r``: elements
    ``[r · cols, (r + 1) · cols)`` of its memory): projection, update, retraction."""
    if ADAM:
        size, root = _adam_step_size(
            step_ptr, lr, log2_beta1, log2_beta2, step_size, bias_correction2_sqrt, STEP_ON_DEVICE
        )
    else:
        size = step_size
        root = bias_correction2_sqrt
    row = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
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
        tl.store(w_ptr + offs, (new * scale[:, None]).to(w_ptr.dtype.element_ty), mask=mask)
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
                tl.store(w_ptr + offs, (w * scale[:, None]).to(w_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _tensor_dot_kernel(w_ptr, g_ptr, part_ptr, n, chunks, BLOCK: tl.constexpr):
    """Pass 1 of a large tensor: this program's span's ⟨g, w⟩ and ‖w‖² into ``part[pid]``, ``part[P + pid]``."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    start = pid.to(tl.int64) * chunks * BLOCK
    dot = tl.zeros((BLOCK,), dtype=tl.float32)
    sq = tl.zeros((BLOCK,), dtype=tl.float32)
    for i in range(0, chunks):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dot += g * w
        sq += w * w
    tl.store(part_ptr + pid, tl.sum(dot, axis=0))
    tl.store(part_ptr + programs + pid, tl.sum(sq, axis=0))


@triton.jit
def _tensor_update_kernel(
    w_ptr, g_ptr, a_ptr, b_ptr, x_ptr, step_ptr, part_ptr, n, chunks,
    sign, weight_decay, decay, lr, beta2, one_minus_beta1, one_minus_beta2, eps, step_size, bias_correction2_sqrt,
    log2_beta1, log2_beta2, momentum, one_minus_dampening,
    ADAM: tl.constexpr, AMSGRAD: tl.constexpr, MOMENTUM: tl.constexpr, FIRST: tl.constexpr,
    NESTEROV: tl.constexpr, STEP_ON_DEVICE: tl.constexpr, PROJECT: tl.constexpr, RETRACT: tl.constexpr,
    BLOCK: tl.constexpr, PARTS: tl.constexpr,
):  # fmt: skip
    """Pass 2 of a large tensor: the coefficient from all of pass 1's partials (summed in the same order by every
    program), the update of this program's span, and the span's new ‖w‖² (of the stored weights) into
    ``part[2P + pid]``."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    if ADAM:
        size, root = _adam_step_size(
            step_ptr, lr, log2_beta1, log2_beta2, step_size, bias_correction2_sqrt, STEP_ON_DEVICE
        )
    else:
        size = step_size
        root = bias_correction2_sqrt
    c = 0.0
    if PROJECT:
        k = tl.arange(0, PARTS)
        dot = tl.sum(tl.load(part_ptr + k, mask=k < programs, other=0.0), axis=0)
        sq = tl.sum(tl.load(part_ptr + programs + k, mask=k < programs, other=0.0), axis=0)
        c = dot / sq
        c = tl.where(c - c == 0.0, c, 0.0)  # finite (x − x is NaN for inf, NaN), else 0
    start = pid.to(tl.int64) * chunks * BLOCK
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
        tl.store(part_ptr + 2 * programs + pid, tl.sum(new_sq, axis=0))


@triton.jit
def _tensor_scale_kernel(w_ptr, target_ptr, part_ptr, n, chunks, BLOCK: tl.constexpr, PARTS: tl.constexpr):
    """Pass 3 of a large tensor: ``target / ‖w‖`` from pass 2's partials, applied to this program's span."""
    pid = tl.program_id(0)
    programs = tl.num_programs(0)
    k = tl.arange(0, PARTS)
    new_sq = tl.sum(tl.load(part_ptr + 2 * programs + k, mask=k < programs, other=0.0), axis=0)
    scale = tl.load(target_ptr) / tl.sqrt(new_sq)
    scale = tl.where(scale - scale == 0.0, scale, 1.0)  # finite, else 1
    start = pid.to(tl.int64) * chunks * BLOCK
    for i in range(0, chunks):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(w_ptr + offs, (w * scale).to(w_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- launching
def _warps(elements: int) -> int:
    """Warps for a program that holds ``elements`` values per live tensor (8 per thread, 4 to 16 warps): for
    sm_90, Adam with amsgrad on bf16, 64-105 registers per thread and no spills (ptxas, ahead of time)."""
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


def _targets(target: torch.Tensor, w: torch.Tensor, rows: int, k: int) -> torch.Tensor:
    """The target norm(s) as ``rows`` contiguous fp32 values on ``w``'s device (no copy when they are already)."""
    target = target.to(device=w.device, dtype=torch.float32).contiguous()
    if target.numel() != rows:
        raise ValueError(f"target[{k}]: expected {rows} value(s), got {target.numel()}")
    return target


def _step_in_kernel(step: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the kernels read Adam's ``step`` themselves (it lives on the weights' device)."""
    return step.device == w.device


def _launch(
    w: torch.Tensor,
    g: torch.Tensor,
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    x: torch.Tensor | None,
    step: torch.Tensor | None,
    target: torch.Tensor | None,
    hyper: dict[str, float],
    flags: dict[str, bool],
    per_row: bool,
) -> None:
    """One weight: the rows kernel (per row; per tensor when small), or the three passes of a large tensor."""
    n = w.numel()
    dummy = w  # pointers that a constexpr branch never reads
    a, b, x = (dummy if t is None else t for t in (a, b, x))
    step = dummy if step is None else step
    target = dummy if target is None else target
    rows = w.shape[0] if per_row and w.dim() > 0 else 1
    cols = n // rows if rows > 0 else 0
    if per_row or n <= SMALL_TENSOR:
        if cols <= ONE_CHUNK_MAX:
            block = max(16, triton.next_power_of_2(cols))
            tile_rows = min(triton.next_power_of_2(rows), max(1, TILE // block))
            one_chunk = True
        else:
            block, tile_rows, one_chunk = CHUNK, 1, False
        _rows_kernel[(triton.cdiv(rows, tile_rows),)](
            w, g, a, b, x, step, target, rows, cols, **hyper, **flags, ROWS=tile_rows, BLOCK=block,
            ONE_CHUNK=one_chunk, num_warps=_warps(tile_rows * block), enable_fp_fusion=FMA,
        )  # fmt: skip
        return
    chunks = triton.cdiv(triton.cdiv(n, CHUNK), MAX_PROGRAMS)
    programs = triton.cdiv(n, chunks * CHUNK)
    parts = max(16, triton.next_power_of_2(programs))
    partials = torch.empty(3 * programs, dtype=torch.float32, device=w.device)
    options = {"BLOCK": CHUNK, "num_warps": _warps(CHUNK), "enable_fp_fusion": FMA}
    if flags["PROJECT"]:
        _tensor_dot_kernel[(programs,)](w, g, partials, n, chunks, **options)
    _tensor_update_kernel[(programs,)](
        w, g, a, b, x, step, partials, n, chunks, **hyper, **flags, PARTS=parts, **options
    )  # fmt: skip
    if flags["RETRACT"]:
        _tensor_scale_kernel[(programs,)](w, target, partials, n, chunks, PARTS=parts, **options)


def _on_device(w: torch.Tensor) -> contextlib.AbstractContextManager:
    """Launch on ``w``'s GPU (Triton launches on the current device); nothing to do for CPU (interpreter)."""
    return torch.cuda.device(w.device) if w.is_cuda else contextlib.nullcontext()


def _log2(beta: float) -> float:
    return math.log2(beta) if beta > 0 else -math.inf


_NO_MOMENTUM = {"momentum": 0.0, "one_minus_dampening": 0.0}
_NO_ADAM = {
    "decay": 1.0, "beta2": 0.0, "one_minus_beta1": 0.0, "one_minus_beta2": 0.0, "eps": 0.0, "step_size": 0.0,
    "bias_correction2_sqrt": 1.0, "log2_beta1": 0.0, "log2_beta2": 0.0,
}  # fmt: skip


def adam_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    max_exp_avg_sqs: list[torch.Tensor],
    steps: list[torch.Tensor],
    norms: list[torch.Tensor],
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
    does. ``norms``: empty tensors (‖w‖ is computed in the kernels; the argument mirrors the C++ kernel's)."""
    n = len(params)
    if not all(len(t) == n for t in (grads, exp_avgs, exp_avg_sqs, steps, norms, targets)) or (
        amsgrad and len(max_exp_avg_sqs) != n
    ):
        raise ValueError("adam_: lists differ in length")
    if any(t.numel() for t in norms):
        raise ValueError("adam_: norms must be empty (the Triton kernels compute ‖w‖ themselves)")
    in_kernel = [_step_in_kernel(s, w) for s, w in zip(steps, params)]
    on_device = [s for s, inside in zip(steps, in_kernel) if inside]
    on_host = [s for s, inside in zip(steps, in_kernel) if not inside]
    if on_device:
        torch._foreach_add_(on_device, 1.0)  # one device op; the kernels read the new value
    if on_host:
        torch._foreach_add_(on_host, 1.0)
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
    for k, w in enumerate(params):
        if w.numel() == 0:
            continue
        x = max_exp_avg_sqs[k] if amsgrad else None
        _check(w, per_row, k, grad=grads[k], exp_avg=exp_avgs[k], exp_avg_sq=exp_avg_sqs[k], max_exp_avg_sq=x)
        if in_kernel[k]:
            hyper = {**common, "step_size": 0.0, "bias_correction2_sqrt": 1.0}
        else:  # torch's own non-capturable step reads its CPU `step` the same way: no wait on the GPU
            t = float(steps[k])
            hyper = {
                **common,
                "step_size": lr / (1.0 - beta1**t),
                "bias_correction2_sqrt": math.sqrt(1.0 - beta2**t),
            }
        rows = w.shape[0] if per_row and w.dim() > 0 else 1
        target = _targets(targets[k], w, rows, k) if retract else None
        with _on_device(w):
            _launch(
                w, grads[k], exp_avgs[k], exp_avg_sqs[k], x, steps[k], target, hyper,
                {**flags, "STEP_ON_DEVICE": in_kernel[k]}, per_row,
            )  # fmt: skip


def sgd_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momentum_buffers: list[torch.Tensor],
    first: list[bool],
    norms: list[torch.Tensor],
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
    gradient), retract (if ``retract``). ``norms``: empty tensors, as in :func:`adam_`."""
    n = len(params)
    if not all(len(t) == n for t in (grads, momentum_buffers, first, norms, targets)):
        raise ValueError("sgd_: lists differ in length")
    if any(t.numel() for t in norms):
        raise ValueError("sgd_: norms must be empty (the Triton kernels compute ‖w‖ themselves)")
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
    for k, w in enumerate(params):
        if w.numel() == 0:
            continue
        buf = momentum_buffers[k] if has_momentum else None
        _check(w, per_row, k, grad=grads[k], momentum_buffer=buf)
        rows = w.shape[0] if per_row and w.dim() > 0 else 1
        target = _targets(targets[k], w, rows, k) if retract else None
        with _on_device(w):
            _launch(
                w, grads[k], buf, None, None, None, target, hyper,
                {**flags, "FIRST": bool(first[k]) and has_momentum}, per_row,
            )  # fmt: skip
