"""The governor inside a Hugging Face ``transformers.Trainer`` run.

The ``Trainer`` owns the loop: it calls ``optimizer.step()`` itself, clips gradients before that call, and
never hands the loss to the optimizer. A *true* skip (no parameter change, no weight decay, no moment update,
no step count) therefore needs three things, each done here:

1. **The step goes through** :class:`~lbw_env.plant.optimizer.GovernedOptimizer`. :class:`GovernedTrainer` wraps the
   optimizer (the one passed as ``optimizers=(optimizer, scheduler)``, or the one the ``Trainer`` builds) in
   :class:`GovernedOptimizerProxy`, a ``torch.optim.Optimizer`` that shares the inner optimizer's param groups
   and state (so LR schedulers, checkpoints and ``accelerate`` see the real optimizer) and whose ``step()`` is
   :meth:`GovernedLoop.step <lbw_env.integrations.loop.GovernedLoop.step>`: telemetry, skip or apply, decisions.

2. **The loss reaches it.** :meth:`GovernedTrainerMixin.training_step` overrides ``Trainer.training_step``,
   the documented override point, and hands the returned loss to the proxy. Why there, and not elsewhere:

   * ``on_pre_optimizer_step`` callbacks receive no loss (only model/optimizer/scheduler/dataloaders);
   * ``compute_loss`` is also called in evaluation (``prediction_step``), is replaced by many subclasses
     (TRL's trainers), and returns the loss *before* the gradient-accumulation normalisation;
   * ``training_step`` is called once per micro-batch, only in training, and returns exactly the loss that was
     back-propagated (after the accumulation scaling), so the sum over an optimizer step's micro-batches is
     that step's loss, whatever ``compute_loss`` / ``compute_loss_func`` a subclass uses.

3. **Clipping happens after measuring.** The ``Trainer`` clips with ``max_grad_norm`` *before* calling
   ``optimizer.step()``, so the governor would see the clipped norm (and the skip gate would be blind to
   gradient spikes). :class:`GovernedTrainer` takes ``args.max_grad_norm`` over: it clips inside the governed
   step, after measuring the unclipped norm, with the same arithmetic (``clip_grads_with_norm_``), and sets
   ``args.max_grad_norm = 0`` so the ``Trainer`` does not clip first.

Governance (envelope, observation window, rollback targets) is :class:`~lbw_env.control.governance.Governance`, as in
the env; a rollback restores the trainable parameters and the optimizer state in place, and training continues
on the next batches with the ``Trainer``'s schedule untouched. When the envelope declares divergence, the
callback stops training (``control.should_training_stop``).

Not supported (each raises at construction): ``fp16`` (the ``GradScaler`` may skip ``optimizer.step()`` on its
own, so steps would go unmeasured; use ``bf16``), DeepSpeed (it replaces the optimizer), and more than one
process (the loss would have to be all-reduced so that every rank takes the same skip decision). Checkpoints
hold the model and the inner optimizer as usual; the governance state (rolling statistics, LR scale, rollback
targets) is not in them, so ``resume_from_checkpoint`` restarts governance from scratch.

Exactness. With the same weights, batches (:class:`PlantBlocks`), AdamW and schedule, a governed ``Trainer``
run produces the env's StepRecords bit for bit (tested). One documented difference: the ``Trainer`` always
computes a gradient norm for its logs with ``clip_grad_norm_(max_norm=inf)``, which multiplies every gradient
by ``clamp(inf / (norm + 1e-6), max=1)`` — exactly 1 for finite gradients, but NaN when the norm is ``inf``;
so a step whose gradient norm is ``inf`` in the plant reads ``nan`` here. Both are non-finite and skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..control.governance import GovernanceConfig
from ..control.protocol import Governor, GovernorFactory
from ..plant.data import BatchStream
from ..plant.records import StepRecord
from .loop import GovernedLoop, resolve_governor

if TYPE_CHECKING:
    from ..plant.trainer import Plant

logger = logging.getLogger(__name__)


class GovernedOptimizerProxy(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` whose ``step()`` is a governed step of ``loop``.

    It holds no state of its own: ``param_groups``, ``state`` and ``defaults`` are the inner optimizer's (as in
    ``accelerate``'s ``AcceleratedOptimizer``), so schedulers set the inner LR and checkpoints save the inner
    state. ``super().__init__`` is deliberately not called: it would build a second set of param groups.
    """

    def __init__(self, loop: GovernedLoop) -> None:
        self.loop = loop
        self.optimizer = loop.optimizer
        self._loss: torch.Tensor | None = None
        self._tokens = 0
        self.last_record: StepRecord | None = None

    # Shared views of the inner optimizer.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, groups: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = groups

    @property
    def state(self) -> Any:
        return self.optimizer.state

    @state.setter
    def state(self, state: Any) -> None:
        self.optimizer.state = state

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, defaults: dict[str, Any]) -> None:
        self.optimizer.defaults = defaults

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state_dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise NotImplementedError("GovernedOptimizerProxy: add parameter groups before wrapping the optimizer")

    def __repr__(self) -> str:
        return f"GovernedOptimizerProxy({self.optimizer!r})"

    # The loss of the coming step, one micro-batch at a time.
    def add_loss(self, loss: torch.Tensor, tokens: int = 0) -> None:
        """Accumulate a micro-batch's back-propagated loss (and its tokens) for the next :meth:`step`."""
        loss = loss.detach()
        self._loss = loss if self._loss is None else self._loss + loss
        self._tokens += int(tokens)

    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        """The governed step: measure, decide, then apply or truly skip (see :meth:`GovernedLoop.step`)."""
        if closure is not None:
            raise ValueError("GovernedOptimizerProxy.step(): closures (LBFGS-style re-evaluation) are not supported")
        if self._loss is None:
            raise RuntimeError(
                "GovernedOptimizerProxy.step(): no loss reached the governed optimizer. Train with GovernedTrainer "
                "(or mix GovernedTrainerMixin into your Trainer subclass): its training_step hands the loss over."
            )
        loss, tokens = self._loss, self._tokens
        self._loss, self._tokens = None, 0
        self.last_record = self.loop.step(loss, tokens=tokens)


class GovernorCallback(TrainerCallback):
    """Stops training when the envelope declares divergence (the governed loop is ``terminated``)."""

    def __init__(self, trainer: GovernedTrainerMixin) -> None:
        self.trainer = trainer

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        loop = self.trainer.lbw
        if loop is not None and loop.terminated:
            logger.warning("lbw governor: the run diverged beyond what the envelope can recover; stopping training")
            control.should_training_stop = True
        return control


class GovernedTrainerMixin:
    """Mix into any ``transformers.Trainer`` subclass (before it in the bases) to govern its optimizer steps.

    ``class MyTrainer(GovernedTrainerMixin, SomeTrainer): ...``; or use :class:`GovernedTrainer`. Extra
    keyword arguments (everything else goes to the ``Trainer``):

    Args:
        governor: a governor object (SB3-style ``predict``) or a spec (``"lbw_guard"``,
            ``"ppo:runs/x/best_model"``) for ``make_governor``.
        make_governor: builds a spec ``governor`` (usually ``policies.make_governor``; see
            :class:`~lbw_env.integrations.loop.GovernedLoop`).
        governance: decision interval, window, envelope (as in the env's config). ``None``: the governor's
            training settings if it carries any (``governor.settings``), else the defaults, which are the
            evaluation suites' settings. Given, it must agree with the governor's training settings.
        rollback: keep rollback targets (two copies of the trainable parameters and their optimizer state).
        initial_loss: where the smoothed training loss starts (the env: validation loss of the initial
            weights); ``None``: the first finite training loss.
        deterministic: passed to ``governor.predict``.

    After ``train()``, :attr:`lbw` is the :class:`~lbw_env.integrations.loop.GovernedLoop` with every
    StepRecord (``lbw.records``) and decision interval (``lbw.history``); its metrics go into the ``Trainer``'s
    logs (``governor/lr_scale``, ``governor/skipped_steps`` ...).
    """

    args: TrainingArguments
    model: Any
    optimizer: Any
    state: TrainerState

    def __init__(
        self,
        *args: Any,
        governor: Governor | str = "lbw_guard",
        make_governor: GovernorFactory | None = None,
        governance: GovernanceConfig | None = None,
        rollback: bool = True,
        initial_loss: float | None = None,
        deterministic: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.lbw_rollback = rollback
        self.lbw_initial_loss = initial_loss
        self.lbw_deterministic = deterministic
        self.lbw: GovernedLoop | None = None
        self.lbw_optimizer: GovernedOptimizerProxy | None = None
        self._check_supported()
        if governance is not None:
            governance.validate()
        # The governor and its settings now, not when the Trainer builds the optimizer: a spec without a factory,
        # a model file that does not load or settings that conflict fail before any data is loaded.
        self.lbw_governor: Governor
        self.lbw_config: GovernanceConfig
        self.lbw_governor, self.lbw_config = resolve_governor(
            governor, governance, rollback=rollback, make_governor=make_governor
        )
        # Clip inside the governed step, after measuring: see the module docstring (point 3).
        self.lbw_clip_norm = float(self.args.max_grad_norm or 0.0)
        if self.lbw_clip_norm > 0:
            logger.info("lbw governor: clipping at max_grad_norm=%g inside the governed step", self.lbw_clip_norm)
            self.args.max_grad_norm = 0.0
        self.add_callback(GovernorCallback(self))  # type: ignore[attr-defined]

    def _check_supported(self) -> None:
        if self.args.fp16:
            raise ValueError(
                "GovernedTrainer: fp16 is not supported (its GradScaler may skip optimizer.step() by itself, so the "
                "governor would miss steps); use bf16"
            )
        if getattr(self, "is_deepspeed_enabled", False):
            raise ValueError("GovernedTrainer: DeepSpeed replaces the optimizer step; not supported")
        check_plant_blocks_args(self.args, getattr(self, "train_dataset", None))
        if self.args.world_size > 1:
            raise NotImplementedError(
                "GovernedTrainer: more than one process; every rank would need the all-reduced loss to take the "
                "same skip decision"
            )

    # -- the optimizer: wrapped once, when the Trainer creates (or receives) it ---------------------------

    def create_optimizer(self, model: Any = None) -> torch.optim.Optimizer:
        """The ``Trainer``'s optimizer (built from ``args`` or passed in ``optimizers=``), governed."""
        if self.lbw_optimizer is not None:
            return self.optimizer  # already wrapped (create_optimizer is called again on a later train())
        inner = super().create_optimizer(model)  # type: ignore[misc]
        unwrapped = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        vocab_size = int(unwrapped.config.vocab_size)
        total = int(self.state.max_steps or self.args.max_steps)
        if total < 1:
            raise ValueError("GovernedTrainer: the number of optimizer steps is unknown; set args.max_steps")
        # Measure in the model's parameter order (as the plant does), not the optimizer's group order: a float32
        # norm depends on the order of its partial sums, and the env's records must be reproduced exactly.
        managed = {id(p) for group in inner.param_groups for p in group["params"]}
        params = [p for p in self.model.parameters() if p.requires_grad and id(p) in managed]
        self.lbw = GovernedLoop(
            inner,
            self.lbw_governor,
            total_steps=total,
            vocab_size=vocab_size,
            config=self.lbw_config,
            params=params or None,
            clip_norm=self.lbw_clip_norm,
            rollback=self.lbw_rollback,
            initial_loss=self.lbw_initial_loss,
            deterministic=self.lbw_deterministic,
        )
        self.lbw_optimizer = GovernedOptimizerProxy(self.lbw)
        self.optimizer = self.lbw_optimizer
        return self.optimizer

    # -- the loss: handed over from training_step (see the module docstring, point 2) -------------------

    def training_step(
        self, model: torch.nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        tokens = _count_tokens(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        if self.lbw_optimizer is None:  # pragma: no cover - the Trainer creates the optimizer before any step
            raise RuntimeError("GovernedTrainer: training_step before the optimizer was created")
        self.lbw_optimizer.add_loss(loss, tokens)
        return loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """The ``Trainer``'s log, with the governor's metrics added (so every reporter gets them)."""
        if self.lbw is not None and "loss" in logs:  # training logs only, not evaluation
            logs = {**logs, **self.lbw.metrics()}
        super().log(logs, *args, **kwargs)  # type: ignore[misc]


def _count_tokens(inputs: dict[str, Any]) -> int:
    ids = inputs.get("input_ids")
    return int(ids.numel()) if isinstance(ids, torch.Tensor) else 0


class GovernedTrainer(GovernedTrainerMixin, Trainer):
    """``transformers.Trainer`` with a governor on its optimizer steps (see :class:`GovernedTrainerMixin`)."""


# ----------------------------------------------------------------------------------------------------------
# Data: the plant's batches as a Trainer dataset
# ----------------------------------------------------------------------------------------------------------


class PlantBlocks(torch.utils.data.IterableDataset):
    """WikiText token blocks in exactly the order of the plant's seeded :class:`~lbw_env.plant.data.BatchStream`.

    Rows of ``seq_len`` inputs predicting ``seq_len`` targets, as the plant trains: ``input_ids = block[:-1]``,
    ``labels = shift_labels = block[1:]``. ``shift_labels`` tells the model's causal-LM loss that the targets are
    already shifted (without it, the loss would shift ``labels`` once more and drop the last target). Give the
    ``Trainer`` ``per_device_train_batch_size = batch_size`` and ``max_steps``, and ``remove_unused_columns=False``
    (the model's ``forward`` takes ``shift_labels`` through ``**kwargs``, which the column filter does not see).
    The stream is endless (epochs continue with new permutations).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int) -> None:
        super().__init__()
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed

    @classmethod
    def from_plant(cls, plant: Plant, seed: int | None = None) -> PlantBlocks:
        """The batches a :class:`~lbw_env.plant.trainer.Plant` would train on (with its seed, or ``seed``)."""
        c = plant.cfg.data
        return cls(plant.batches.tokens, c.seq_len, c.batch_size, plant.seed if seed is None else seed)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        stream = BatchStream(self.tokens, self.seq_len, self.batch_size, self.seed)
        while True:
            for block in stream.next():
                yield {"input_ids": block[:-1], "labels": block[1:], "shift_labels": block[1:]}


def check_plant_blocks_args(args: TrainingArguments, dataset: Any) -> None:
    """Raise if ``args`` would silently break :class:`PlantBlocks` (the column filter would drop ``shift_labels``)."""
    if isinstance(dataset, PlantBlocks) and args.remove_unused_columns:
        raise ValueError(
            "PlantBlocks needs TrainingArguments(remove_unused_columns=False): the column filter would drop "
            "shift_labels, and the loss would silently train on targets shifted twice"
        )
