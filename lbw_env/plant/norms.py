"""Exact L2 norms of the parameters, their gradients and their update, at a small fixed cost per governed step.

The definition (:func:`partial_norms`): float32 L2 norms of each row of a large matrix and of each other tensor, in
parameter order, then the float32 norm of those. :class:`NormPlan` and :class:`UpdateBuffer` compute exactly those
reductions, so the numbers are the definition's bits whatever the bookkeeping; what they save is per-call overhead
and memory traffic (the telemetry is a few passes over the parameters: its price is calls and cache misses, not
arithmetic). Why a row of a block has the bits of a lone tensor: on the CPU a float32 L2 norm over a contiguous last
dimension is one kernel applied to each output row on its own (one vector accumulator along the row, then its
lanes, then the tail; a row is never split between threads), so a lone contiguous tensor and a row of a contiguous
block of such rows are reduced alike (measured on every length up to 300 and hundreds more up to 1M elements, on 1
and 2 threads; tests/test_optimizer_overhead_equivalence.py checks the telemetry against the definition).

Inside a training step all of this runs with cold caches (forward, backward and the optimizer evict the telemetry's
data and code), so what counts is the traffic and the number of torch calls and Python objects touched, each of
which costs several times what a warm loop measures. Tried and dropped, because they measured no faster in a
training step: copying the gradients into blocks (one ``cat`` per run of tensors of one width, then one norm per
block) instead of one norm per tensor; a second θ buffer (or a scratch chunk) so that θ_new is copied with ``cat``
instead of per-tensor copies. Both trade per-call overhead for extra traffic, and the traffic costs as much. Also
tried (session 12, AVX2 EPYC, qwen2-tiny): parameters and gradients as views of two flat buffers laid out like
:class:`UpdateBuffer` (gradients accumulated in place into a zeroed buffer, so each norm is a few block reductions
and each copy one call). Same telemetry bits, but no faster: gradient norm 212 vs 229 us, update norms 448 vs
403 us, trainer/bare CPU ratio 1.034 vs 1.040 (within noise): the zeroing and the in-place accumulation cost what
the fewer calls save. Also tried (session 17, AVX-512 EPYC, qwen2-s): each gradient's partial norms taken in a
``register_post_accumulate_grad_hook`` as backward writes it (still in cache; the same call on the same tensor, so
the same bits, with a version check at the step). Ratios 1.033 and 1.028 against 1.023 and 1.032 without (60
rounds each, interleaved; rounds ranged 0.8-1.3 on that busy VM): no gain beyond noise, the Python call per hook
costing what the warm cache saves. What is left is memory traffic over cold caches, about 3 % of a qwen2-tiny step.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Callable

import torch

FLAT_NORM_MAX = 1 << 14
"""Tensors up to this many elements are reduced flat; larger matrices row by row first. A flat float32 norm on
the CPU loses precision linearly with length (measured: 1e-6 relative at 16k elements, 2.5e-5 on qwen2-tiny's
131k-element tied-embedding gradient, 6e-5 on qwen2-m's: enough to clip above the cap); row norms, then the
norm of those, stay within ~1e-7 at a cost within measurement noise (under 0.3 % of a qwen2-tiny step)."""


def by_rows(t: torch.Tensor) -> bool:
    return t.dim() >= 2 and t.numel() > FLAT_NORM_MAX


def _flat_norms(flat: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    # dtype only where needed: foreach norms of bf16/fp16 tensors would come back rounded to that dtype.
    if all(t.dtype == torch.float32 for t in flat):
        return torch._foreach_norm(flat)
    return torch._foreach_norm(flat, dtype=torch.float32)


def partial_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Float32 L2 norms of the tensors (of each row, for large matrices): the global norm is the norm of these.

    The reference layout: the row norms of each large matrix in order, then one norm per other tensor in order.
    """
    flat: list[torch.Tensor] = []
    parts: list[torch.Tensor] = []
    for t in tensors:
        if by_rows(t):
            parts.append(torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float32))
        else:
            flat.append(t)
    if flat:
        parts.append(torch.stack(_flat_norms(flat)))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm as a 0-d float32 tensor (no host sync)."""
    return torch.linalg.vector_norm(partial_norms(tensors))


Targets = tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]
"""Where :meth:`NormPlan.fill` writes: a view per large matrix, the view of the other norms, and each of those."""


class NormPlan:
    """:func:`partial_norms` for a fixed list of tensor shapes, planned once, written into preallocated rows.

    The same reductions on the same tensors, so the same bits; what it saves is the per-step sorting, the
    allocations and the ``cat`` (one call per large matrix and one for all the other tensors remain).
    """

    def __init__(self, tensors: list[torch.Tensor]) -> None:
        self.rows = [i for i, t in enumerate(tensors) if by_rows(t)]
        self.flat = [i for i, t in enumerate(tensors) if not by_rows(t)]
        self.row_counts = [tensors[i].shape[0] for i in self.rows]
        self.size = sum(self.row_counts) + len(self.flat)
        self.dtype = None if all(tensors[i].dtype == torch.float32 for i in self.flat) else torch.float32
        """As :func:`_flat_norms`: float32 accumulation asked for only where some tensor is not float32."""

    def targets(self, out: torch.Tensor) -> Targets:
        """Views of a 1-d buffer of :attr:`size` elements: one per large matrix, one for the other norms, and each
        of those."""
        starts = list(itertools.accumulate(self.row_counts, initial=0))
        flat = out[starts[-1] :]
        return [out[a:b] for a, b in itertools.pairwise(starts)], flat, list(flat.unbind())

    def fill(self, tensors: list[torch.Tensor], targets: Targets) -> None:
        """Write the partial norms of ``tensors`` (shaped as planned) into ``targets``."""
        row_out, flat_out, flat_items = targets
        for i, out in zip(self.rows, row_out):
            torch.linalg.vector_norm(tensors[i].flatten(1), dim=1, dtype=torch.float32, out=out)
        if not self.flat:
            return
        if flat_out.device.type != "cpu":  # one fused multi-tensor kernel
            torch.stack(_flat_norms([tensors[i] for i in self.flat]), out=flat_out)
            return
        # On the CPU the multi-tensor norm is this loop in C++ plus a 0-d tensor per norm and their stack; each norm
        # straight into its element is the same kernel call without those (qwen2-tiny's 25, caches cold: 225 -> 160 us).
        dtype = self.dtype
        for i, out in zip(self.flat, flat_items):
            torch.linalg.vector_norm(tensors[i], dtype=dtype, out=out)


_VERSION = operator.attrgetter("_version")


@dataclasses.dataclass
class _Chunk:
    """Parameters (or row ranges of a large matrix) measured together: their part of θ and of the update buffer
    fits in a core's cache."""

    params: list[torch.Tensor] = dataclasses.field(default_factory=list)
    rows: list[tuple[int, int] | None] = dataclasses.field(default_factory=list)
    """Per parameter: the range of its rows in this chunk, or None for all of it."""
    views: list[torch.Tensor] = dataclasses.field(default_factory=list)
    """Their places in the update buffer."""
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = dataclasses.field(default_factory=list)
    """Runs of rows of equal length in the buffer, and where the norms of those rows go (θ, Δθ)."""
    last: int = -1
    """The latest of its parameters in the parameter list."""
    fresh: list[torch.Tensor] = dataclasses.field(default_factory=list)
    """Its parameters that no chunk measured before it met (whole tensors): what a blocked optimizer step
    (:mod:`lbw_env.plant.blocked`) updates right before this chunk is measured."""


class UpdateBuffer:
    """A copy of θ that outlives the step, and ‖θ‖, ‖Δθ‖ measured from it chunk by chunk (CPU, float32).

    Layout: one buffer in which every row of a large matrix and every other tensor is a row, rows of equal
    length side by side, so that the norms of a run of them take one row-wise reduction. A contiguous row is
    reduced by the same kernel whether it is a tensor of its own or a row of a block, so the norms are the
    reference's bits; a fixed permutation puts them in :class:`NormPlan` order.

    After the optimizer step, chunk by chunk (about :attr:`CHUNK` elements, so that the chunk's θ and buffer
    stay in a core's cache while they are read four times): subtract θ_new (the buffer holds θ_old − θ_new,
    Δθ up to its sign), take the row norms, copy θ_new back in, take its row norms. The buffer then holds
    θ_new, which is the next step's θ_old unless something changed the parameters in between. Any in-place
    change bumps a tensor's version counter and a new storage changes its data pointer, so a stamp of both
    says when the copy before the next step can be skipped. Writes through ``.data`` (or a numpy view) bypass
    the version counter: after such a change call :meth:`GovernedOptimizer.invalidate`.
    """

    CHUNK = 1 << 17
    """Elements per chunk: 512 KiB of θ and 512 KiB of buffer, well inside a 1-2 MiB L2 cache."""

    @staticmethod
    def supports(params: list[torch.Tensor]) -> bool:
        """Float32 contiguous parameters, all on the CPU (a GPU's multi-tensor norm is another kernel)."""
        return all(
            p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous() and p.numel() > 0 for p in params
        )

    def __init__(self, params: list[torch.Tensor], plan: NormPlan) -> None:
        rows = {i: params[i].shape[0] for i in plan.rows} | {i: 1 for i in plan.flat}
        planned = plan.rows + plan.flat
        first_row = dict(zip(planned, itertools.accumulate([rows[i] for i in planned], initial=0)))
        length = {i: params[i].numel() // rows[i] for i in planned}
        layout = sorted(planned, key=lambda i: (length[i], first_row[i]))  # equal row lengths side by side
        buffer = torch.empty(sum(p.numel() for p in params), dtype=torch.float32)
        self.norms = torch.empty(2, plan.size, dtype=torch.float32)
        """Row norms of θ (0) and of the update (1), in layout order."""
        self.chunks: list[_Chunk] = []
        order: list[int] = []  # plan position of each layout row
        start: dict[int, int] = {}  # where each parameter begins in the buffer
        offset = row = size = run_offset = run_row = 0
        run_length = -1
        for i in layout:
            k, n = rows[i], length[i]
            per_piece = k if k * n <= self.CHUNK else max(1, self.CHUNK // n)  # a large matrix by row ranges
            start[i] = offset
            for a in range(0, k, per_piece):
                b = min(a + per_piece, k)
                if not self.chunks or (size + (b - a) * n > self.CHUNK and size >= self.CHUNK // 4):
                    self.chunks.append(_Chunk())
                    size, run_length = 0, -1
                chunk = self.chunks[-1]
                chunk.last = max(chunk.last, i)
                whole = b - a == k
                chunk.params.append(params[i])
                chunk.rows.append(None if whole else (a, b))
                view = buffer[offset : offset + (b - a) * n]
                chunk.views.append(view.view(params[i].shape if whole else (b - a, n)))
                if n != run_length:  # a new run of rows of this length
                    run_length, run_offset, run_row = n, offset, row
                    chunk.blocks.append((buffer, buffer, buffer))  # placeholder, set below
                order.extend(range(first_row[i] + a, first_row[i] + b))
                offset, row, size = offset + (b - a) * n, row + b - a, size + (b - a) * n
                run = buffer[run_offset:offset].view(-1, n)
                chunk.blocks[-1] = (run, self.norms[0, run_row:row], self.norms[1, run_row:row])
        # Optimizers update the parameters in list order, so the last ones are still in cache after the step:
        # measure their chunks first (about -50 us a step on qwen2-tiny, whose first chunk is the embedding).
        self.chunks.sort(key=lambda c: -c.last)
        seen: set[int] = set()
        for chunk in self.chunks:  # the parameters each chunk meets first, in measuring order
            for p in chunk.params:
                if id(p) not in seen:
                    seen.add(id(p))
                    chunk.fresh.append(p)
        self.params = [params[i] for i in layout]
        self.views = [buffer[start[i] : start[i] + params[i].numel()].view(params[i].shape) for i in layout]
        position = [0] * plan.size
        for layout_row, plan_row in enumerate(order):
            position[plan_row] = layout_row
        self.perm = torch.tensor(position, dtype=torch.long)
        self.stamp: list[int] | None = None
        """Version counters, then data pointers, of the parameters when the buffer last held θ (None: it does not)."""

    def _stamp(self) -> list[int]:
        """Version counters, then data pointers (``map`` over C getters: no Python frame per parameter)."""
        return [*map(_VERSION, self.params), *map(torch.Tensor.data_ptr, self.params)]

    def save(self) -> None:
        """Make the buffer hold θ (before the optimizer step), unless it still does."""
        if self.stamp != self._stamp():
            torch._foreach_copy_(self.views, self.params)

    def blocks(self) -> list[list[torch.Tensor]]:
        """Per chunk, in measuring order, the whole parameters it meets first (see :meth:`measure`)."""
        return [chunk.fresh for chunk in self.chunks]

    def measure(self, out: torch.Tensor, step: Callable[[int], None] | None = None) -> None:
        """Row norms of θ_new and of the update into ``out`` (2 x plan size, plan order); keeps θ_new.

        ``step``: the optimizer step not taken yet, by blocks; ``step(k)`` must update the parameters of
        ``blocks()[k]``, and is called right before chunk ``k`` is measured, while they are in cache."""
        for k, chunk in enumerate(self.chunks):
            if step is not None and chunk.fresh:
                step(k)
            new = chunk.params
            if any(chunk.rows):  # row ranges of a large matrix: views of them, taken now (never stale)
                new = [p if r is None else p.flatten(1)[r[0] : r[1]] for p, r in zip(chunk.params, chunk.rows)]
            torch._foreach_sub_(chunk.views, new)  # θ_old − θ_new
            for block, _, delta in chunk.blocks:
                torch.linalg.vector_norm(block, dim=1, out=delta)
            torch._foreach_copy_(chunk.views, new)
            for block, theta, _ in chunk.blocks:
                torch.linalg.vector_norm(block, dim=1, out=theta)
        torch.index_select(self.norms, 1, self.perm, out=out)
        self.stamp = self._stamp()
