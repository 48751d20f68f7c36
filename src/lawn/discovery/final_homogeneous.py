"""Find the final homogeneous sub-network: the weights LAWN should constrain.

**The rule.** Run the model once on ``example_inputs`` and take the autograd graph of its output (every tensor
of a tuple / dict output). Each edge from an operation to one of its inputs is *homogeneous* when the
operation is linear or positively homogeneous along that input (``f(αx) = α^d f(x)``, ``α > 0``), by the
allow-list in :mod:`lawn.discovery.homogeneous_ops`: matmul / conv / embedding (in the activation and in the weight),
``mul``, ``relu``, ``leaky_relu``, pooling, ``sum``/``mean``/``max``, reshapes, indexing, concatenation,
dropout, residual ``+``; ``x / y`` along ``x`` only; attention along ``v`` only. Any other edge *breaks*:
normalization, ``gelu``, ``silu``, ``tanh``, ``sigmoid``, ``softmax``, ``exp``, ``log``, and every operation
the list does not know. A parameter is **in the final homogeneous sub-network** iff

1. some path in the graph leads from the output to it, and
2. *every* such path consists of homogeneous edges only.

So a weight used both after the last norm and before it (an embedding tied to the output head, a layer feeding
both a residual branch and a LayerNorm) is out: a weight must not reach the output through a norm at all.
Residual sums of homogeneous paths are allowed, so the tail is homogeneous *along each path*; scaling all its
weights together scales the output by one power ``α^k`` only when all paths have the same depth and no bias
(:func:`lawn.check_homogeneity` measures this). Of the parameters in the sub-network, those with ≥ 2 dims are
the *weights* (returned, and constrained by LAWN); 1-dim ones (biases, per-channel scales) are homogeneous "up
to biases" and are not constrained. With ``strict=True`` a sum breaks homogeneity when one of its summands
carries no weight (a bias, a constant, the raw input), so a biased layer breaks it for everything below: the
sub-network is then exactly homogeneous in its weights.

Tied (shared) weights are one ``Parameter``: discovery sees one leaf with every use as a path to it, judges it
once by the rule above, and returns it once, under its first name in ``model.named_parameters()`` (the other
names are listed by :func:`lawn.explain`). Frozen parameters (``requires_grad=False``) are never returned,
and not judged unless ``judge_frozen=True``: judging them means recording their part of the graph, which for a
frozen backbone saves its activations as a training forward would (many times what the trainable part needs).

**Which output.** Every tensor of the output is analysed (a tuple, dict or dataclass output included), unless
``output=`` names the one to use (``output="logits"`` for a Hugging Face model given labels, whose ``loss``
is not homogeneous in anything).

**Why the autograd graph.** It is recorded while the model's own Python runs on a real input, so
data-dependent control flow, Python loops, hooks, functional calls and any module structure need nothing
special: the graph holds exactly the operations that produced the output, each one tied to the tensors it used
(``AccumulateGrad`` leaves carry the parameters), and it costs one forward pass. ``torch.fx.symbolic_trace``
raises ``TraceError`` on control flow that depends on tensor values; ``torch.export`` takes seconds and
refuses such branches too (``GuardOnDataDependentSymNode``). The price: the answer is for the path the example
input took (branches not taken are not seen), and an operation is judged by its autograd node (custom
``autograd.Function``s and compiled regions are opaque and count as breaking: pass the uncompiled model).

The forward pass runs under ``torch.enable_grad()`` in the model's current mode (``train()`` or ``eval()``,
never changed); BatchNorm running statistics, every other buffer, ``requires_grad`` flags and the RNG states
are restored afterwards.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.autograd.graph import Node

from lawn.constraint.weights import NamedWeight
from lawn.discovery._forward import (
    ExampleInputs,
    OutputSelector,
    call,
    check_model,
    named_output_tensors,
    select_output,
    untouched,
)
from lawn.discovery.homogeneous_ops import ADDITIVE_INPUTS, has_constant_summand, homogeneous_inputs, op_name
from lawn.discovery.layers import named_weight
from lawn.discovery.parametrized import parametrization_note, parametrized_weights

#: ops left out when a homogeneous path is printed (they only move numbers around)
_LAYOUT_OPS = frozenset(
    {"T", "View", "UnsafeView", "ReshapeAlias", "AsStrided", "Expand", "Permute", "Transpose", "Squeeze",
     "Unsqueeze", "Clone", "ToCopy", "Alias", "Select", "Slice"}
)  # fmt: skip


@dataclass(frozen=True)
class ParameterVerdict:
    """One parameter's place in the model: in the final homogeneous sub-network or not, and why."""

    name: str
    shape: tuple[int, ...]
    in_tail: bool  # reaches the output, only through homogeneous operations
    constrained: bool  # in_tail, ≥ 2 dims and trainable: returned by final_homogeneous_params
    reason: str
    aliases: tuple[str, ...] = ()  # other names of a tied (shared) parameter
    parameter: nn.Parameter | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Discovery:
    """Everything one discovery pass found (``lawn.explain`` prints it)."""

    model_name: str
    training: bool
    strict: bool
    parameters: list[ParameterVerdict]  # forward order; parameters the output does not use come last
    output_breaks: list[str]  # the non-homogeneous operations nearest to the output
    output_names: tuple[str, ...] = ()  # the output's tensors that were analysed ("logits", "loss", "[0]")
    unjudged_frozen: tuple[str, ...] = ()  # frozen parameters left out (judge_frozen=False)

    @property
    def constrained(self) -> list[tuple[str, nn.Parameter]]:
        return [(v.name, v.parameter) for v in self.parameters if v.constrained]

    def why_empty(self) -> str:
        """The message of the ``ValueError`` raised when no weight qualifies."""
        frozen = [v.name for v in self.parameters if v.in_tail and len(v.shape) >= 2 and not v.constrained]
        losses = [name for name in self.output_names if name.split(".")[-1].lower().endswith("loss")]
        if losses:
            return (
                f"{self.model_name}: the output includes a loss ({', '.join(losses)}): the example batch contains "
                "labels, so the model computed its loss, which is not homogeneous in any weight. Name the output "
                "to analyse (output='logits') or drop the labels from example_inputs."
            )
        if frozen:
            return (
                f"{self.model_name}: every weight of the final homogeneous sub-network is frozen "
                f"(requires_grad=False): {', '.join(frozen)}; there is nothing for LAWN to constrain"
            )
        breaks = "; ".join(self.output_breaks[:3]) or "no homogeneous operation"
        message = (
            f"{self.model_name}: no weight reaches the output only through positively homogeneous "
            f"operations; the paths from the output first pass through: {breaks}. "
        )
        if any("Compiled" in b or "Checkpoint" in b for b in self.output_breaks):
            message += (
                "Discovery cannot see inside a compiled or reentrant-checkpointed region: pass the "
                "uncompiled model (for torch.compile, model._orig_mod). "
            )
        else:
            message += (
                "LAWN constrains the weights that produce the logits, so the model must return logits: "
                "drop the final sigmoid/softmax from forward() and apply it in the loss "
                "(BCEWithLogitsLoss, CrossEntropyLoss). "
            )
        if self.strict:
            message += "strict=True counts every bias as breaking homogeneity: try strict=False. "
        if self.unjudged_frozen:
            message += (
                f"{len(self.unjudged_frozen)} frozen parameter(s) were not judged (judge_frozen=True judges them). "
            )
        return message + "lawn.explain(model, example_inputs) lists every parameter and why it is out."


class _ModuleSpans:
    """Which module's forward created an autograd node, from node sequence numbers (creation order)."""

    def __init__(self, model: nn.Module) -> None:
        self._probe = torch.zeros((), requires_grad=True)
        self._stack: list[tuple[str, str, int]] = []
        self.spans: list[tuple[int, int, str, str]] = []
        self._handles = []
        if not hasattr(self._probe.view(()).grad_fn, "_sequence_nr"):
            return  # no sequence numbers in this torch build: report ops without their modules
        for name, module in model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter(name, type(module).__name__)))
            self._handles.append(module.register_forward_hook(self._leave))

    def _tick(self) -> int:
        with torch.enable_grad():
            return self._probe.view(()).grad_fn._sequence_nr()

    def _enter(self, name: str, kind: str):
        def hook(module: nn.Module, args: object) -> None:
            self._stack.append((name, kind, self._tick()))

        return hook

    def _leave(self, module: nn.Module, args: object, output: object) -> None:
        if self._stack:
            name, kind, start = self._stack.pop()
            self.spans.append((start, self._tick(), name, kind))

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def owner(self, node: Node) -> tuple[str, str] | None:
        """``(qualified name, class name)`` of the innermost module whose forward created ``node``."""
        seq = _sequence_nr(node)
        inside = [(end - start, name, kind) for start, end, name, kind in self.spans if start < seq < end]
        return min(inside)[1:] if inside else None


def _sequence_nr(node: Node) -> float:
    getter = getattr(node, "_sequence_nr", None)
    return getter() if getter is not None else math.inf


def _leaf_tensor(node: Node) -> torch.Tensor | None:
    return getattr(node, "variable", None) if op_name(node) == "AccumulateGrad" else None


def _adds_unweighted(node: Node, carries_weight: dict[Node, bool]) -> bool:
    """Strict mode: ``node`` is a sum with a summand that carries no weight (a bias or a constant)."""
    if has_constant_summand(node):
        return True
    edges = node.next_functions
    return any(
        edges[i][0] is not None and not carries_weight.get(edges[i][0], False)
        for i in ADDITIVE_INPUTS.get(type(node).__name__, ())
        if i < len(edges)
    )


def _homogeneous_edge(node: Node, i: int, carries_weight: dict[Node, bool] | None) -> bool:
    """Whether homogeneity passes from ``node``'s output to its input ``i`` (strict: ``carries_weight``)."""
    inputs = homogeneous_inputs(node)
    if inputs is not None and i not in inputs:
        return False
    return carries_weight is None or not _adds_unweighted(node, carries_weight)


def _carries_weight(roots: list[Node], weights: set[int]) -> dict[Node, bool]:
    """For strict mode: whether a node's value reaches a weight (a ≥ 2-dim parameter) by homogeneous edges."""
    memo: dict[Node, bool] = {}
    stack = [(root, False) for root in roots]
    while stack:  # iterative post-order: children first (graphs can be deeper than Python's recursion limit)
        node, expanded = stack.pop()
        if node in memo:
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child, _ in node.next_functions if child is not None)
            continue
        leaf = _leaf_tensor(node)
        memo[node] = (leaf is not None and id(leaf) in weights) or any(
            child is not None and memo.get(child, False) and _homogeneous_edge(node, i, memo)
            for i, (child, _) in enumerate(node.next_functions)
        )
    return memo


def _describe(node: Node, spans: _ModuleSpans, strict_sum: bool) -> str:
    op = op_name(node)
    what = f"{op} adding a bias or constant (strict=True)" if strict_sum else op
    owner = spans.owner(node)
    if owner is None:
        return what
    name, kind = owner
    return f"{what} in {kind}.forward" if name == "" else f"{what} in {name} ({kind})"


def _path(leaf: Node, parent: dict[Node, Node | None]) -> str:
    ops: list[str] = []
    node = parent[leaf]
    while node is not None:
        op = op_name(node)
        if op not in _LAYOUT_OPS and (not ops or ops[-1] != op):
            ops.append(op)
        node = parent[node]
    if len(ops) > 6:
        ops = [*ops[:3], "…", *ops[-2:]]
    return " → ".join([*ops, "output"])


def discover(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    strict: bool = False,
    output: OutputSelector = None,
    judge_frozen: bool = False,
) -> Discovery:
    """Judge every parameter of ``model`` by the rule in this module's docstring, from one forward pass.

    ``output``: the part of the model's output to analyse (a key or attribute name such as ``"logits"``, a
    position, or a function of the output); all of it by default. ``judge_frozen``: judge frozen parameters
    too (their part of the graph is then recorded).
    """
    check_model(model)
    if not isinstance(strict, bool):
        raise TypeError(f"strict: expected True or False, got {strict!r}")
    if not isinstance(judge_frozen, bool):
        raise TypeError(f"judge_frozen: expected True or False, got {judge_frozen!r}")
    with untouched(model, track_all_parameters=judge_frozen), torch.inference_mode(False), torch.enable_grad():
        spans = _ModuleSpans(model)
        try:
            raw = call(model, example_inputs)
        finally:
            spans.remove()
    model_name = type(model).__name__
    named_outputs = named_output_tensors(select_output(raw, output))
    tensors = [t for _, t in named_outputs if t.requires_grad]
    if not named_outputs:
        raise ValueError(
            f"{model_name}: the output ({type(raw).__name__}) holds no tensor that discovery can find (it reads "
            "tensors, tuples, lists, dicts and dataclasses): pass output=<name, position or function> to pick "
            "the logits"
        )
    if not tensors:
        raise ValueError(
            f"{model_name}: the output does not depend on any parameter (no autograd graph): does forward() "
            "detach its output or run under torch.no_grad()? (frozen parameters are tracked only with "
            "judge_frozen=True)"
        )
    roots = list(dict.fromkeys(torch.autograd.graph.get_gradient_edge(t).node for t in tensors))

    names: dict[int, list[str]] = {}
    by_id: dict[int, nn.Parameter] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
        by_id[id(p)] = p
    weights = {pid for pid, p in by_id.items() if p.dim() >= 2}
    carries_weight = _carries_weight(roots, weights) if strict else None

    # Breadth-first from the output; a node is visited at most twice: on a homogeneous path, on a broken one.
    parent: dict[Node, Node | None] = dict.fromkeys(roots)  # homogeneous paths: node → the node above it
    broken_by: dict[Node, Node] = {}  # node → the last breaking node on a shortest broken path down to it
    frontier: dict[Node, None] = {}  # breaking nodes reached by a homogeneous path, nearest first
    first_use: dict[int, float] = {}
    queue: deque[tuple[Node, Node | None]] = deque((root, None) for root in roots)
    for root in roots:
        leaf = _leaf_tensor(root)
        if leaf is not None:  # the output is a parameter itself
            first_use[id(leaf)] = -1
    while queue:
        node, breaker = queue.popleft()
        for i, (child, _) in enumerate(node.next_functions):
            if child is None:
                continue
            leaf = _leaf_tensor(child)
            if leaf is not None:
                first_use[id(leaf)] = min(first_use.get(id(leaf), math.inf), _sequence_nr(node))
            if breaker is None and _homogeneous_edge(node, i, carries_weight):
                if child not in parent:
                    parent[child] = node
                    queue.append((child, None))
                continue
            breaks_here = breaker is None or not _homogeneous_edge(node, i, carries_weight)
            if breaker is None:
                frontier[node] = None
            if child not in broken_by:
                broken_by[child] = node if breaks_here else breaker
                queue.append((child, broken_by[child]))

    leaves = {id(n.variable): n for n in [*parent, *broken_by] if _leaf_tensor(n) is not None}
    describe = {
        n: _describe(n, spans, strict and homogeneous_inputs(n) is None) for n in {*broken_by.values(), *frontier}
    }
    verdicts = []
    for pid, p in by_id.items():
        leaf = leaves.get(pid)
        homogeneous, broken = leaf in parent, leaf in broken_by
        in_tail = leaf is not None and homogeneous and not broken
        constrained = in_tail and p.dim() >= 2 and p.requires_grad
        if leaf is None and not p.requires_grad and not judge_frozen:
            reason = "frozen (requires_grad=False): not judged (judge_frozen=True judges it)"
        elif leaf is None:
            reason = "does not reach the output for these inputs"
        elif broken and homogeneous:
            reason = f"reaches the output through homogeneous ops and also through {describe[broken_by[leaf]]}"
        elif broken:
            reason = f"passes through {describe[broken_by[leaf]]}"
        elif p.dim() < 2:
            reason = "in the tail, but a bias or scale (< 2 dims): not constrained"
        elif not p.requires_grad:
            reason = f"in the tail, but frozen (requires_grad=False): not constrained; {_path(leaf, parent)}"
        else:
            reason = f"only homogeneous ops: {_path(leaf, parent)}"
        verdicts.append(
            ParameterVerdict(
                name=names[pid][0],
                shape=tuple(p.shape),
                in_tail=in_tail,
                constrained=constrained,
                reason=reason,
                aliases=tuple(names[pid][1:]),
                parameter=p,
            )
        )
    rank = {pid: (first_use.get(pid, math.inf), k) for k, pid in enumerate(by_id)}
    verdicts.sort(key=lambda v: rank[id(v.parameter)])
    return Discovery(
        model_name=model_name,
        training=model.training,
        strict=strict,
        parameters=verdicts,
        output_breaks=[describe[n] for n in frontier],
        output_names=tuple(name for name, t in named_outputs if t.requires_grad),
        unjudged_frozen=() if judge_frozen else tuple(v.name for v in verdicts if not v.parameter.requires_grad),
    )


def final_homogeneous_params(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    strict: bool = False,
    output: OutputSelector = None,
    judge_frozen: bool = False,
) -> list[NamedWeight]:
    """The weights of ``model``'s final homogeneous sub-network, as ``(name, Parameter)`` in forward order.

    Each entry is a :class:`lawn.constraint.NamedWeight`: it unpacks as ``(name, Parameter)`` and carries the dim of
    the weight's output units and its pruning mask, for ``granularity="row"`` (:mod:`lawn.discovery.layers`).

    ``lawn.LAWN(torch.optim.Adam(model.parameters()), final_homogeneous_params(model, x), free_steps=...)``.
    ``example_inputs`` is a tensor, a tuple of positional arguments or a dict of keyword arguments for one
    forward pass. Raises ``ValueError`` when no trainable weight qualifies (e.g. the model returns
    ``sigmoid(logits)``): the message says which operations block the way. ``output`` and ``judge_frozen``:
    see :func:`discover`.
    """
    found = discover(model, example_inputs, strict=strict, output=output, judge_frozen=judge_frozen)
    if not found.constrained:
        raise ValueError(parametrization_note(found, parametrized_weights(model)) or found.why_empty())
    return [named_weight(model, name, p) for name, p in found.constrained]
