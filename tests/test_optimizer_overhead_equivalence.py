"""The governed step's telemetry is bit for bit the reference definition, however the fast path lays it out.

:class:`~lbw_env.plant.optimizer.GovernedOptimizer` computes its norms from planned, preallocated and (on the CPU)
chunked, grouped buffers, and keeps the copy of θ from one step to the next. None of that may change a number:
``grad_norm``, ``param_norm`` and ``update_ratio`` must equal, as floats, what the slow, obvious definition below
gives on the same tensors (float32 L2 norms; the rows of a large matrix first, one norm per other tensor, then the
norm of those), over faults, skips of every kind, LR scales, clipping, snapshots, rollbacks and replays, parameters
changed between steps, and every layout the fast path handles or leaves to the reference path.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lbw_env.plant import optimizer as governed_optimizer
from lbw_env.plant.blocked import BlockedAdam
from lbw_env.plant.config import TrainerConfig
from lbw_env.plant.data import Corpus
from lbw_env.plant.optimizer import Control, GovernedOptimizer
from lbw_env.plant.records import StepRecord
from lbw_env.plant.trainer import Plant

pytestmark = pytest.mark.usefixtures("torch_threads")

LARGE = 1 << 14
"""Above this many elements a matrix is reduced row by row (the definition's precision rule)."""


def reference_norm(tensors: list[torch.Tensor]) -> float:
    """The global L2 norm as defined: float32 row norms of each large matrix, then one norm per other tensor,
    in that order, then the float32 norm of all of those."""
    rows, others = [], []
    for t in tensors:
        if t.dim() >= 2 and t.numel() > LARGE:
            rows.append(torch.linalg.vector_norm(t.flatten(1), dim=1, dtype=torch.float32))
        else:
            others.append(torch.linalg.vector_norm(t, dtype=torch.float32).reshape(1))
    return float(torch.linalg.vector_norm(torch.cat(rows + others)))


def same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


class Referee:
    """Wraps ``governed.step``: recomputes the step's telemetry from copies of the gradients and of θ before and
    after it, with :func:`reference_norm`, and checks the record against that, float for float."""

    def __init__(self, governed: GovernedOptimizer) -> None:
        self.governed = governed
        self.inner = governed.step
        self.param_norm = reference_norm([p.detach() for p in governed.params])
        self.checked = 0
        governed.step = self.step  # type: ignore[method-assign]

    def step(self, loss: Any, control: Control = Control(), tokens: int = 0) -> StepRecord:
        params = self.governed.params
        grads = [p.grad.detach().clone() for p in params if p.grad is not None]
        before = [p.detach().clone() for p in params]
        record = self.inner(loss, control, tokens=tokens)
        after = [p.detach() for p in params]
        assert same(record.grad_norm, reference_norm(grads) if grads else 0.0), record
        if record.skipped:
            assert record.update_ratio == 0.0
            assert all(torch.equal(x, y) for x, y in zip(before, after)), "a skip moved a parameter"
        else:
            self.param_norm = reference_norm(after)
            update = reference_norm([y - x for x, y in zip(before, after)])
            if math.isnan(record.update_ratio):  # measure_update=False
                assert not self.governed.measure_update
            else:
                assert record.update_ratio == update / max(self.param_norm, 1e-12), record
        assert record.param_norm == self.param_norm, record
        self.checked += 1
        return record


# ----------------------------------------------------------------------------------------------------------
# The plant: faults, every kind of skip, LR scales, clipping, snapshots, rollback and replay
# ----------------------------------------------------------------------------------------------------------

FAULTS = [
    {"kind": "bad_batch", "start": 9, "length": 2},
    {"kind": "grad_noise", "start": 12, "length": 3, "magnitude": 0.5},
    {"kind": "nan_loss", "start": 16},
    {"kind": "lr_shock", "start": 18, "length": 2, "magnitude": 4.0},
]
CONTROLS = [
    Control(),
    Control(lr_scale=0.5),
    Control(skip_gate=1.5),
    Control(),
    Control(force_skip=True),
    Control(lr_scale=1.7, skip_gate=-math.inf),  # the gate skips whatever it sees (within its budget)
    Control(lr_scale=0.25),
    Control(),
]


def run_plant(plant: Plant, steps: int) -> list[dict[str, Any]]:
    """``steps`` governed steps under :data:`CONTROLS`, with a snapshot (step 20), a rollback to it (26: the good
    weights, then new batches) and a replay of it (30); the records without their timings."""
    records = []
    for t in range(steps):
        if t == 20:
            snap = plant.snapshot()
        if t == 26:
            plant.restore(snap, rewind=False)
        if t == 30:
            plant.restore(snap)
        record = dataclasses.asdict(plant.step(CONTROLS[t % len(CONTROLS)]))
        records.append({k: v for k, v in record.items() if k != "seconds"})
    return records


@pytest.mark.parametrize(("clip", "chunk"), [(0.0, None), (0.5, 1 << 12)], ids=["default", "clip-small-chunks"])
def test_plant_records_are_the_reference(
    make_cfg: Callable[..., TrainerConfig],
    corpus: Corpus,
    clip: float,
    chunk: int | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if chunk is not None:  # chunks smaller than the embedding: it is measured in row ranges
        monkeypatch.setattr(governed_optimizer._UpdateBuffer, "CHUNK", chunk)
    trainer = Plant(make_cfg("optim.lr=3e-3", f"optim.clip_norm={clip}", faults=FAULTS), corpus)
    referee = Referee(trainer.governed)
    reasons = {record["skip_reason"] for record in run_plant(trainer, 34)}
    assert referee.checked == 34
    assert reasons == {"none", "forced", "nonfinite", "gate"}


def test_parameters_changed_between_steps(make_cfg: Callable[..., TrainerConfig], corpus: Corpus) -> None:
    """The kept θ is never stale: in-place changes and new storages are seen; ``.data`` writes after invalidate()."""
    trainer = Plant(make_cfg(), corpus)
    referee = Referee(trainer.governed)
    trainer.step()
    trainer.step()
    with torch.no_grad():
        trainer.params[3].mul_(0.5)  # an in-place change bumps the version counter
    trainer.step()
    trainer.params[0].data = trainer.params[0].data.clone()  # a new storage: a new data pointer
    trainer.step()
    trainer.params[5].data.add_(0.25)  # invisible to the version counter...
    trainer.governed.invalidate()  # ...so said
    trainer.step()
    trainer.model.load_state_dict({k: v + 0.01 for k, v in trainer.model.state_dict().items()})
    trainer.step()
    assert referee.checked == 6


# ----------------------------------------------------------------------------------------------------------
# Layouts: what the CPU fast path groups, and what it leaves to the reference path
# ----------------------------------------------------------------------------------------------------------


class Odd(nn.Module):
    """Parameters of awkward shapes: long rows with tails, a 3-d tensor, a long vector, a scalar, a frozen one."""

    def __init__(self, dtype: torch.dtype = torch.float32, transposed: bool = False) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter((torch.randn(shape, generator=gen) * 0.1).to(dtype))

        self.wide = param(300, 70)  # row-wise, rows of 70 (not a multiple of a vector width)
        self.cube = param(2, 3, 5000)  # row-wise after flatten(1)
        self.long = param(20000)  # a long vector is reduced flat
        self.small = param(7, 3)
        self.rows70 = param(70)  # the same length as wide's rows: grouped with them
        self.scalar = param()
        self.frozen = nn.Parameter(torch.ones(5), requires_grad=False)
        square = torch.randn(40, 40, generator=gen).to(dtype)
        self.square = nn.Parameter(square.t() if transposed else square)  # .t(): not contiguous

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        y = (self.wide[:, :3] @ x[:3]).sum() + self.cube.mean() * x.sum() + (self.long[:5] * x[:5]).sum()
        y = y + (self.small * x[:3]).sum() + self.rows70.square().sum() + self.scalar * x[0] + self.square.sum()
        return y.float().square() + self.frozen.sum()


@pytest.mark.parametrize(
    ("dtype", "transposed"),
    [(torch.float32, False), (torch.float32, True), (torch.bfloat16, False)],
    ids=["grouped", "non-contiguous", "bf16"],
)
@pytest.mark.parametrize("measure_update", [True, False])
@pytest.mark.parametrize("chunk", [None, 1000], ids=["chunks", "small-chunks"])
def test_odd_layouts_are_the_reference(
    dtype: torch.dtype, transposed: bool, measure_update: bool, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if chunk is not None:  # smaller than wide and cube: both measured in row ranges
        monkeypatch.setattr(governed_optimizer._UpdateBuffer, "CHUNK", chunk)
    model = Odd(dtype, transposed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    governed = GovernedOptimizer(optimizer, model.parameters(), clip_norm=1.0, measure_update=measure_update)
    assert all(p.requires_grad for p in governed.params) and len(governed.params) == 7
    referee = Referee(governed)
    gen = torch.Generator().manual_seed(1)
    for t in range(8):
        model.loss(torch.randn(5, generator=gen).to(dtype)).backward()
        if t == 3:
            model.long.grad = None  # a parameter without a gradient this step
        governed.step(torch.tensor(1.0 + t), Control(lr_scale=0.5) if t == 5 else Control())
    assert referee.checked == 8
    # the case under test is the one meant: the CPU fast path groups only float32 contiguous parameters
    grouped = dtype == torch.float32 and not transposed and measure_update
    assert (governed._update is not None) == grouped


# ----------------------------------------------------------------------------------------------------------
# The blocked AdamW step: the optimizer's own step, taken chunk by chunk inside the measurement
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [None, 1 << 12], ids=["chunks", "small-chunks"])
def test_blocked_step_is_the_optimizers_step(
    make_cfg: Callable[..., TrainerConfig], corpus: Corpus, chunk: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parameters, moments, step counters and records are bit for bit those of ``optimizer.step()``."""
    if chunk is not None:  # the embedding spans several chunks: stepped whole at the first, measured in row ranges
        monkeypatch.setattr(governed_optimizer._UpdateBuffer, "CHUNK", chunk)
    cfg = make_cfg("optim.lr=3e-3", "optim.weight_decay=0.1", faults=FAULTS)
    blocked_steps = 0
    original = BlockedAdam.step

    def counted(self: BlockedAdam, block: int, lr_scale: float = 1.0) -> None:
        nonlocal blocked_steps
        blocked_steps += 1
        original(self, block, lr_scale)

    with monkeypatch.context() as m:
        m.setattr(BlockedAdam, "supports", staticmethod(lambda optimizer, params: False))
        plain = Plant(cfg, corpus)
        plain_records = run_plant(plain, 34)
    monkeypatch.setattr(BlockedAdam, "step", counted)
    blocked = Plant(cfg, corpus)
    blocked_records = run_plant(blocked, 34)
    assert plain.governed._blocked is None and blocked.governed._blocked is not None
    stepping = sum(1 for block in blocked.governed._blocked.blocks if block)  # chunks that meet a parameter first
    assert blocked_steps >= 20 * stepping  # most applied steps went by blocks
    assert repr(blocked_records) == repr(plain_records)  # repr: NaN equals NaN, every other float to the bit
    for p, q in zip(plain.params, blocked.params, strict=True):
        assert torch.equal(p, q)
        a, b = plain.optimizer.state[p], blocked.optimizer.state[q]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_blocked_step_leaves_hooks_and_schedulers_their_step() -> None:
    """A step hook, an LR scheduler's wrapper of ``step`` or a parameter without a gradient: ``optimizer.step()``
    runs as usual (the hook fires, the scheduler sees its call), and the result is the same."""
    model = Odd()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=True)
    governed = GovernedOptimizer(optimizer, params)
    gen = torch.Generator().manual_seed(1)

    def step() -> None:
        model.loss(torch.randn(5, generator=gen)).backward()
        governed.step(torch.tensor(1.0))

    step()  # the first step initialises Adam's state through optimizer.step()
    assert governed._blocked is not None and governed._blocked.ready() is False
    model.loss(torch.randn(5, generator=gen)).backward()
    assert governed._blocked.ready()
    fired = []
    handle = optimizer.register_step_post_hook(lambda *_: fired.append(1))
    assert not governed._blocked.ready()
    governed.step(torch.tensor(1.0))
    handle.remove()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    model.loss(torch.randn(5, generator=gen)).backward()
    assert not governed._blocked.ready()
    governed.step(torch.tensor(1.0))
    scheduler.step()  # warns if it did not see optimizer.step() called
    model.loss(torch.randn(5, generator=gen)).backward()
    model.long.grad = None
    assert not governed._blocked.ready()
    assert fired == [1]


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.SGD(ps, lr=0.1),
        lambda ps: torch.optim.AdamW(ps, lr=torch.tensor(0.01), foreach=False),
        lambda ps: torch.optim.AdamW(ps[1:], lr=0.01),
    ],
    ids=["sgd", "tensor-lr", "not-every-param"],
)
def test_blocked_step_refuses_what_it_cannot_replay(make: Callable[[list[torch.Tensor]], Any]) -> None:
    params = [p for p in Odd().parameters() if p.requires_grad]
    assert not BlockedAdam.supports(make(params), params)
    assert BlockedAdam.supports(torch.optim.Adam(params, lr=0.01, amsgrad=True), params)


def test_blocked_step_follows_a_loaded_optimizer_state() -> None:
    """``optimizer.load_state_dict`` replaces the param-group dicts and the state tensors: the blocked step reads
    both afresh (a new LR in the loaded groups is used), bit for bit what ``optimizer.step()`` does."""
    runs = []
    for blocked in (False, True):
        model = Odd()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1, foreach=True)
        governed = GovernedOptimizer(optimizer, params)
        gen = torch.Generator().manual_seed(1)
        for t in range(6):
            if t == 3:
                state = optimizer.state_dict()
                state["param_groups"][0]["lr"] = 3e-3
                optimizer.load_state_dict(state)
            model.loss(torch.randn(5, generator=gen)).backward()
            if not blocked:
                governed._blocked = None
            elif t >= 1:  # after the first step, which initialises the state: every step by blocks
                assert governed._blocked is not None and governed._blocked.ready()
            governed.step(torch.tensor(1.0), Control(lr_scale=0.5) if t == 4 else Control())
        assert (governed._blocked is not None) == blocked
        runs.append([p.detach().clone() for p in params])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))
    assert optimizer.param_groups[0]["lr"] == 3e-3
