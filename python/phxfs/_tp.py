"""Tensor parallelism for :mod:`phxfs.safetensors`: which tensors a rank
splits, along which dimension, and which bytes of each tensor it reads.

Pure geometry, no I/O and no torch (but for :func:`resolve_tp`'s lazy
``torch.distributed`` import when given a process group):
:class:`TPPlan` maps tensor names to a split dimension; :func:`shard_bounds`
is the rule for a dimension that does not divide evenly; :func:`shard_layout`
turns a tensor's header entry into the byte runs of one rank's shard.

The rule for uneven splits is ceil division, the usual one (``torch.chunk``,
vocab-parallel embeddings): each rank takes ``ceil(n / tp_size)`` indices of
the split dimension in rank order, so the last ranks get fewer, and may get
none (n = 4 over 3 ranks: 2, 2, 0). A split never fails for its size alone.
Whether a split lands on head boundaries (q/k/v with ``tp_size`` beyond the
number of KV heads, say) is the model's concern, not the loader's.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["TPPlan", "LLAMA_TP_PLAN", "shard_bounds", "ShardLayout", "shard_layout", "resolve_tp"]

#: One rule of a plan: a glob pattern and the dimension it splits (None: replicated).
Rule = Tuple[str, Optional[int]]
PlanLike = Union["TPPlan", Mapping[str, Optional[int]], Sequence[Rule]]


class TPPlan:
    """Which tensors a tensor-parallel load splits, and along which dimension.

    ``rules``: glob patterns (:mod:`fnmatch`, case-sensitive, matched against
    the whole tensor name; ``*`` also matches dots) to a dimension, as a
    mapping or a sequence of pairs. The first pattern that matches a name
    wins; ``None`` replicates (to exempt names from a broader pattern after
    it); a name no pattern matches is replicated. Dimensions may be negative
    (numpy's meaning); one out of range for a matched tensor is a
    ``ValueError`` naming the tensor when loading.

    Column-parallel layers split their output dimension, dim 0 of a
    ``[out, in]`` weight (and their bias); row-parallel layers split their
    input dimension, dim 1 (their bias stays whole: it is added after the
    all-reduce). A pattern that matches no tensor is not an error (one plan
    serves checkpoints with and without biases or a tied ``lm_head``);
    :meth:`unmatched` lists such patterns for a check of your own.

    >>> plan = TPPlan({"*.qkv.weight": 0, "*.out.weight": 1})
    >>> plan.split_dim("layers.0.qkv.weight"), plan.split_dim("norm.weight")
    (0, None)
    """

    def __init__(self, rules: Union[Mapping[str, Optional[int]], Iterable[Rule]]) -> None:
        items: List[Rule] = list(rules.items()) if isinstance(rules, Mapping) else list(rules)
        for rule in items:
            if not (isinstance(rule, tuple) and len(rule) == 2):
                raise TypeError(f"a plan rule is a (pattern, dim) pair, not {rule!r}")
            pattern, dim = rule
            if not isinstance(pattern, str) or not pattern:
                raise TypeError(f"a plan pattern must be a non-empty string, not {pattern!r}")
            if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool)):
                raise TypeError(
                    f"pattern {pattern!r}: the split dim must be an int or None, not {dim!r}"
                )
        self._rules: Tuple[Rule, ...] = tuple(items)
        self._compiled = [(re.compile(fnmatch.translate(p)), d) for p, d in self._rules]

    @property
    def rules(self) -> Tuple[Rule, ...]:
        """The (pattern, dim) rules, in the order they are tried."""
        return self._rules

    def split_dim(self, name: str) -> Optional[int]:
        """The dimension ``name`` is split along (as written in the plan), or None."""
        for rx, dim in self._compiled:
            if rx.match(name):
                return dim
        return None

    def unmatched(self, names: Iterable[str]) -> List[str]:
        """The patterns that match none of ``names``, in plan order."""
        seen = [False] * len(self._compiled)
        for name in names:
            for i, (rx, _) in enumerate(self._compiled):
                if rx.match(name):
                    seen[i] = True
        return [p for (p, _), s in zip(self._rules, seen) if not s]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TPPlan) and self._rules == other._rules

    def __hash__(self) -> int:
        return hash(self._rules)

    def __repr__(self) -> str:
        return f"TPPlan({dict(self._rules)!r})"


#: Llama-style names (Llama, Mistral, Qwen2 and the like in Hugging Face
#: layout): attention q/k/v and MLP gate/up projections column-parallel
#: (dim 0, with their biases), o_proj and down_proj row-parallel (dim 1),
#: embed_tokens and lm_head vocab-parallel (dim 0); everything else (norms,
#: row-parallel biases, rotary buffers) replicated.
LLAMA_TP_PLAN = TPPlan(
    [
        ("*.q_proj.weight", 0),
        ("*.k_proj.weight", 0),
        ("*.v_proj.weight", 0),
        ("*.gate_proj.weight", 0),
        ("*.up_proj.weight", 0),
        ("*.q_proj.bias", 0),
        ("*.k_proj.bias", 0),
        ("*.v_proj.bias", 0),
        ("*.gate_proj.bias", 0),
        ("*.up_proj.bias", 0),
        ("*.o_proj.weight", 1),
        ("*.down_proj.weight", 1),
        ("*embed_tokens.weight", 0),
        ("*lm_head.weight", 0),
    ]
)


def as_plan(plan: PlanLike) -> TPPlan:
    """A :class:`TPPlan` from a plan, a mapping or a sequence of rules."""
    return plan if isinstance(plan, TPPlan) else TPPlan(plan)


def shard_bounds(n: int, rank: int, size: int) -> Tuple[int, int]:
    """``[lo, hi)``: rank's indices of a dimension of ``n`` split over ``size``
    ranks (ceil division, the last ranks smaller or empty).

    >>> [shard_bounds(10, r, 4) for r in range(4)]
    [(0, 3), (3, 6), (6, 9), (9, 10)]
    """
    step = -(-n // size)
    lo = min(rank * step, n)
    return lo, min(lo + step, n)


@dataclass(frozen=True)
class ShardLayout:
    """One rank's shard of a C-contiguous tensor.

    ``shape``: the shard's shape. ``runs``: ``(offset, length)`` byte ranges
    of the tensor's data, in order; laid end to end they are the shard in C
    order. One run for a split of dim 0 (or of a dimension whose outer
    dimensions are all 1) and for a replicated tensor; ``prod(shape[:dim])``
    runs for a split of dimension ``dim`` otherwise (one per row for dim 1
    of a matrix), unless the shard covers whole rows.
    """

    shape: Tuple[int, ...]
    runs: Tuple[Tuple[int, int], ...]

    @property
    def nbytes(self) -> int:
        return sum(n for _, n in self.runs)


def shard_layout(
    name: str, bits: int, shape: Tuple[int, ...], dim: Optional[int], rank: int, size: int
) -> ShardLayout:
    """The layout of ``rank``'s shard of tensor ``name`` (elements of ``bits``
    bits, ``shape``) split along ``dim`` (None: replicated) over ``size`` ranks."""
    numel = 1
    for d in shape:
        numel *= d
    if dim is None:
        nbytes = numel * bits // 8
        return ShardLayout(shape, ((0, nbytes),) if nbytes else ())
    ndim = len(shape)
    if not -ndim <= dim < ndim:
        raise ValueError(
            f"tensor {name!r}: split dim {dim} is out of range for its shape {list(shape)} "
            f"({ndim} dimensions)"
        )
    if bits % 8:
        raise ValueError(f"tensor {name!r}: packed sub-byte tensors cannot be split")
    d = dim % ndim
    inner = bits // 8
    for x in shape[d + 1 :]:
        inner *= x
    outer = 1
    for x in shape[:d]:
        outer *= x
    lo, hi = shard_bounds(shape[d], rank, size)
    out_shape = shape[:d] + (hi - lo,) + shape[d + 1 :]
    length, stride = (hi - lo) * inner, shape[d] * inner
    if length == 0 or outer == 0:
        return ShardLayout(out_shape, ())
    if outer == 1 or length == stride:  # one contiguous range
        return ShardLayout(out_shape, ((lo * inner, outer * length),))
    return ShardLayout(
        out_shape, tuple((o * stride + lo * inner, length) for o in range(outer))
    )


def resolve_tp(
    tp_plan: Optional[PlanLike],
    tp_rank: Optional[int],
    tp_size: Optional[int],
    process_group: Any,
) -> Optional[Tuple[TPPlan, int, int]]:
    """(plan, rank, size) for a tensor-parallel load, or None for a whole one.

    Rank and size come from ``tp_rank``/``tp_size`` or from
    ``process_group`` (a ``torch.distributed`` group; ``torch`` is imported
    only then); given both, they must agree.
    """
    if process_group is not None:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("process_group given but torch.distributed is not initialized")
        g_rank, g_size = int(dist.get_rank(group=process_group)), int(
            dist.get_world_size(group=process_group)
        )
        if g_rank < 0:
            raise ValueError("this process is not a member of process_group")
        for what, mine, theirs in (("tp_rank", tp_rank, g_rank), ("tp_size", tp_size, g_size)):
            if mine is not None and mine != theirs:
                raise ValueError(f"{what}={mine} disagrees with process_group's {theirs}")
        tp_rank, tp_size = g_rank, g_size
    if tp_plan is None and tp_rank is None and tp_size is None:
        return None
    size = 1 if tp_size is None else tp_size
    rank = 0 if tp_rank is None else tp_rank
    for what, v in (("tp_size", size), ("tp_rank", rank)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{what} must be an int, not {v!r}")
    if size < 1:
        raise ValueError(f"tp_size must be at least 1, not {size}")
    if not 0 <= rank < size:
        raise ValueError(f"tp_rank must be in [0, tp_size) = [0, {size}), not {rank}")
    if tp_plan is None:
        if size > 1:
            raise ValueError(
                "a tensor-parallel load needs tp_plan (which tensors to split: "
                "e.g. phxfs.safetensors.LLAMA_TP_PLAN)"
            )
        tp_plan = TPPlan(())
    return as_plan(tp_plan), rank, size
