"""The plant: a real language model trained on WikiText (AdamW or another optimizer), one governed step at a time.

``Plant.step(control)`` reads top to bottom like nanoGPT's loop: next batch (with any injected fault),
scheduled LR, forward, backward, then the governed optimizer step (telemetry, true skip, LR scale).
``snapshot()``/``restore()`` copy the complete training state into preallocated buffers, so the env can
roll back or reset in milliseconds and replay bit for bit. The model/optimizer part of a snapshot is
:func:`~lbw_env.plant.state.capture_train_state`, the same helper the integrations use.

Fine-tune regimes: full-parameter (the default) or LoRA (``model.lora.r > 0``: peft adapters on the frozen
base; only the adapters are trainable, so the optimizer, the telemetry and snapshots cover only them).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers.utils import logging as hf_logging

from ..cache import cache_root, cached_dir, stable_hash
from ..config import to_dict
from . import runtime
from .clipping import ZClip
from .config import FaultConfig, LoRAConfig, OptimConfig, TrainerConfig
from .data import BatchStream, Corpus, eval_blocks, load_corpus
from .models import apply_lora, build_model, count_parameters, from_pretrained, init_lora_weights
from .optimizer import Control, GateConfig, GovernedOptimizer
from .optimizers import build_optimizer, eval_weights
from .records import StepRecord, safe_exp
from .state import TrainState, capture_train_state, restore_train_state


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Loss and perplexity on a fixed evaluation subset."""

    split: str
    loss: float
    """Mean token cross-entropy (nats); inf if the model produces non-finite logits."""
    ppl: float
    """exp(loss); inf on overflow."""
    tokens: int


@dataclasses.dataclass
class Snapshot(TrainState):
    """The complete training state at one step, in buffers that later snapshots reuse: the model/optimizer
    :class:`~lbw_env.plant.state.TrainState` plus where the run stands (step, batch order, fault RNGs)."""

    seed: int
    t: int
    data_state: dict[str, int]
    fault_rng_state: Mapping[str, Any]
    """numpy's ``bit_generator.state`` (a deep copy): the mapping its getter returns and its setter takes."""
    noise_rng_state: torch.Tensor


class Plant:
    """Model + data + optimizer (``optim.name``) + schedule (+ optional clipping baselines and injected faults)."""

    def __init__(self, cfg: TrainerConfig, corpus: Corpus | None = None, gate: GateConfig | None = None) -> None:
        runtime.configure(cfg.runtime.threads, cfg.runtime.mallopt)
        self.cfg = cfg
        self.corpus = corpus if corpus is not None else load_corpus(cfg.data, cfg.runtime.cache_dir)
        self._gate = gate
        train = self.corpus.train
        if cfg.data.max_train_tokens:
            train = train[: cfg.data.max_train_tokens]
        self._train_tokens = train
        self._eval_cache: dict[str, torch.Tensor] = {}
        self._base_state: dict[str, torch.Tensor] | None = None
        # Where the weights start: a real checkpoint, the preset's cached base model, or a fresh init.
        self.base_path: Path | None = None
        if cfg.model.pretrained:
            self.base_path = Path(cfg.model.pretrained)
            self.model = from_pretrained(cfg.model.pretrained, cfg.model.dtype, cfg.model.device)
        elif cfg.regime == "finetune":
            self.base_path = ensure_base_checkpoint(cfg, self.corpus)
            self.model = from_pretrained(self.base_path, cfg.model.dtype, cfg.model.device)
        else:
            self.model = build_model(cfg.model, self.corpus.vocab_size, cfg.data.seq_len, cfg.runtime.seed)
        self.lora: LoRAConfig | None = cfg.model.lora if cfg.model.lora.r else None
        if self.lora is not None:
            # Only the adapters train; the frozen base never changes, so a reset re-initialises the adapters and
            # needs no copy of the base weights (which, for a real checkpoint, would be the whole model).
            self.model = apply_lora(self.model, self.lora, cfg.runtime.seed)  # type: ignore[assignment]
        elif self.base_path is not None:
            # Kept on the CPU so that a reset to the base weights costs a copy, not a disk read.
            self._base_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
        self.device = next(self.model.parameters()).device
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self._build_optimizer()
        self._reset_streams(cfg.runtime.seed)

    # -- construction -----------------------------------------------------------------------------------

    def _build_optimizer(self) -> None:
        """A fresh optimizer (``optim.name``) and governed step: also on reset, since some optimizers keep state in
        their parameter groups (Prodigy's step-size estimate, schedule-free's averages) that must start over."""
        o = self.cfg.optim
        # Decay matrices only (as nanoGPT/GPT-2): decaying norms' gains and biases only hurts.
        decay = [p for p in self.params if p.dim() >= 2]
        no_decay = [p for p in self.params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = build_optimizer([g for g in groups if g["params"]], o)
        zclip = ZClip(o.zclip, max_norm=o.clip_norm) if o.clip == "zclip" else None
        clip_norm = 0.0 if zclip is not None else o.clip_norm  # ZClip holds the fixed cap itself
        self.governed = GovernedOptimizer(self.optimizer, self.params, clip_norm, gate=self._gate, clipper=zclip)

    def _reset_streams(self, seed: int) -> None:
        self.seed = seed
        self.t = 0
        self.batches = BatchStream(self._train_tokens, self.cfg.data.seq_len, self.cfg.data.batch_size, seed)
        # Separate generators for faults, so that injecting a fault never shifts the batch order.
        self.fault_rng = np.random.default_rng([seed, 0xFA17])
        self.noise_rng = torch.Generator(device="cpu").manual_seed(seed * 7919 + 17)

    def reset(self, seed: int) -> None:
        """Start the run again with ``seed``: fresh (or base) weights, empty optimizer state, step 0."""
        if self.lora is not None:
            init_lora_weights(self.model, seed)  # the base is frozen: it still holds the base weights
        elif self._base_state is not None:
            self.model.load_state_dict(self._base_state)
        else:
            fresh = build_model(self.cfg.model, self.corpus.vocab_size, self.cfg.data.seq_len, seed)
            self.model.load_state_dict(fresh.state_dict())
        self._build_optimizer()
        self._reset_streams(seed)

    # -- schedule and faults ----------------------------------------------------------------------------

    def scheduled_lr(self, t: int) -> float:
        """The schedule at step ``t`` (warmup, then cosine or constant), times any active LR shock."""
        o = self.cfg.optim
        if o.warmup_steps and t < o.warmup_steps:
            lr = o.lr * (t + 1) / o.warmup_steps
        elif o.schedule == "constant":
            lr = o.lr
        else:
            progress = min(1.0, (t - o.warmup_steps) / max(1, o.steps - o.warmup_steps))
            lr = o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
        for f in self._active_faults(t, "lr_shock"):
            lr *= f.magnitude
        return lr

    def _active_faults(self, t: int, kind: str) -> list[FaultConfig]:
        return [f for f in self.cfg.faults if f.kind == kind and f.start <= t < f.start + f.length]

    @property
    def done(self) -> bool:
        return self.t >= self.cfg.optim.steps

    # -- one optimizer step -----------------------------------------------------------------------------

    def step(self, control: Control = Control()) -> StepRecord:
        """One optimizer step under ``control``. The batch is consumed whether or not the step is skipped."""
        t0 = time.perf_counter()
        batch = self.batches.next()
        if self._active_faults(self.t, "bad_batch"):
            # A corrupted batch: uniformly random tokens, as from a broken shard or a mis-decoded file.
            batch = torch.from_numpy(self.fault_rng.integers(0, self.corpus.vocab_size, batch.shape))
        x = batch.to(self.device, non_blocking=True)

        lr = self.scheduled_lr(self.t)
        for group in self.optimizer.param_groups:
            group["lr"] = lr  # the scheduled LR; the governed step scales it by the control

        logits = self.model(input_ids=x[:, :-1]).logits
        # Cross-entropy in float32 whatever the model dtype: bf16 log-softmax over the vocab is too coarse.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten())
        if self._active_faults(self.t, "nan_loss"):
            loss = loss * float("nan")
        loss.backward()
        for f in self._active_faults(self.t, "grad_noise"):
            self._add_grad_noise(f.magnitude)

        record = self.governed.step(loss, control, tokens=int(x[:, 1:].numel()))
        record.step = self.t
        record.seconds = time.perf_counter() - t0
        self.t += 1
        return record

    @torch.no_grad()
    def _add_grad_noise(self, magnitude: float) -> None:
        """Gaussian noise of ``magnitude`` x each gradient's RMS (a noisy or faulty reduction)."""
        for p in self.params:
            if p.grad is None:
                continue
            rms = p.grad.float().pow(2).mean().sqrt()
            noise = torch.randn(p.grad.shape, generator=self.noise_rng, dtype=torch.float32)
            p.grad.add_((noise * rms * magnitude).to(p.grad.device, p.grad.dtype))

    # -- evaluation -------------------------------------------------------------------------------------

    def eval_data(self, split: str) -> torch.Tensor:
        if split not in self._eval_cache:
            tokens = {"valid": self.corpus.valid, "test": self.corpus.test, "train": self._train_tokens}[split]
            n = self.cfg.data.test_blocks if split == "test" else self.cfg.data.eval_blocks
            self._eval_cache[split] = eval_blocks(tokens, self.cfg.data.seq_len, n)
        return self._eval_cache[split]

    @torch.no_grad()
    def evaluate(self, split: str = "valid") -> EvalResult:
        """Mean loss and perplexity on the fixed subset of ``split`` (``valid``, ``test`` or ``train``)."""
        blocks = self.eval_data(split)
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        with eval_weights(self.optimizer, self.params):  # schedule-free: its averaged weights, then back exactly
            for chunk in blocks.split(max(self.cfg.data.batch_size, 16)):
                x = chunk.to(self.device)
                logits = self.model(input_ids=x[:, :-1]).logits
                total += float(F.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(), reduction="sum"))
                count += x[:, 1:].numel()
        self.model.train(was_training)
        loss = total / count if math.isfinite(total) else math.inf
        return EvalResult(split=split, loss=loss, ppl=safe_exp(loss), tokens=count)

    # -- snapshot / restore -----------------------------------------------------------------------------

    def snapshot(self, into: Snapshot | None = None) -> Snapshot:
        """Copy the whole training state; pass an earlier snapshot as ``into`` to reuse its buffers."""
        state = capture_train_state(self.params, self.optimizer, self.governed, into=into)
        return Snapshot(
            params=state.params,
            opt_state=state.opt_state,
            opt_groups=state.opt_groups,
            governed_state=state.governed_state,
            seed=self.seed,
            t=self.t,
            data_state=self.batches.state(),
            fault_rng_state=copy.deepcopy(self.fault_rng.bit_generator.state),
            noise_rng_state=self.noise_rng.get_state(),
        )

    def restore(self, snap: Snapshot, rewind: bool = True) -> None:
        """Put the training state of ``snap`` back (the snapshot stays valid for further restores).

        ``rewind=False`` restores only the model, the optimizer and the governed statistics, and leaves the
        step counter, batch order and fault RNGs where they are: a *rollback*, in which training moves on
        to new batches from the last good weights, rather than a replay.
        """
        restore_train_state(snap, self.params, self.optimizer, self.governed)
        if not rewind:
            return
        if snap.seed != self.seed:
            self._reset_streams(snap.seed)
        self.t = snap.t
        self.batches.set_state(snap.data_state)
        self.fault_rng.bit_generator.state = copy.deepcopy(snap.fault_rng_state)
        self.noise_rng.set_state(snap.noise_rng_state)

    # -- description ------------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        return {
            "parameters": count_parameters(self.model),
            "trainable_parameters": count_parameters(self.model, trainable_only=True),
            "vocab_size": self.corpus.vocab_size,
            "train_tokens": len(self._train_tokens),
            "tokens_per_step": self.cfg.data.batch_size * self.cfg.data.seq_len,
        }


# ----------------------------------------------------------------------------------------------------------
# Base checkpoints for the fine-tune regime
# ----------------------------------------------------------------------------------------------------------


def base_checkpoint_key(cfg: TrainerConfig) -> dict[str, Any]:
    """What determines a base checkpoint: the architecture, the data it saw, and how it was trained."""
    # Not LoRA: the base is pretrained full-parameter, and LoRA and full fine-tunes share it.
    model = {k: v for k, v in to_dict(cfg.model).items() if k not in ("device", "dtype", "pretrained", "lora")}
    data = {k: v for k, v in to_dict(cfg.data).items() if k not in ("eval_blocks", "test_blocks", "root")}
    key = {"model": model, "data": data, "steps": cfg.base_steps, "lr": cfg.base_lr, "version": 1}
    if base_seed(cfg):  # seed 0 (and None) keep the key of the bases cached before base_seed existed
        key["seed"] = base_seed(cfg)
    return key


def base_seed(cfg: TrainerConfig) -> int:
    """The seed the base checkpoint is pretrained with: ``base_seed``, or 0 when unset."""
    return 0 if cfg.base_seed is None else cfg.base_seed


def ensure_base_checkpoint(cfg: TrainerConfig, corpus: Corpus | None = None) -> Path:
    """The cached base model of ``cfg``'s preset, pretrained once from scratch at a safe LR.

    Pretraining: ``base_steps`` steps of cosine AdamW at ``base_lr`` with warmup, seed :func:`base_seed`, no
    faults, no governor. Stored in ``save_pretrained`` format under ``<cache>/base/<preset>-<hash>``, built atomically,
    with ``lbw_base.json`` recording its validation perplexity and ``lbw_manifest.json`` (written last) the
    sha256 of every file: each call verifies the folder against it, so a corrupted checkpoint (even one of the
    same size) is logged, rebuilt and never loaded (:func:`lbw_env.cache.cached_dir`).
    """
    key = base_checkpoint_key(cfg)
    target = cache_root(cfg.runtime.cache_dir) / "base" / f"{cfg.model.preset}-{stable_hash(key)}"

    def build(tmp: Path) -> None:
        optim = OptimConfig(
            lr=cfg.base_lr, steps=cfg.base_steps, warmup_steps=max(1, cfg.base_steps // 20), schedule="cosine"
        )
        model = dataclasses.replace(cfg.model, lora=LoRAConfig())  # pretraining is full-parameter
        pre_cfg = dataclasses.replace(
            cfg, regime="scratch", optim=optim, faults=[], model=model,
            runtime=dataclasses.replace(cfg.runtime, seed=base_seed(cfg)),
        )  # fmt: skip
        trainer = Plant(pre_cfg, corpus)
        t0 = time.perf_counter()
        while not trainer.done:
            trainer.step()
        result = trainer.evaluate("valid")
        hf_logging.disable_progress_bar()
        trainer.model.save_pretrained(tmp)
        hf_logging.enable_progress_bar()
        meta = {"key": key, "valid_ppl": result.ppl, "seconds": time.perf_counter() - t0}
        (tmp / "lbw_base.json").write_text(json.dumps(meta, indent=2))

    return cached_dir(target, build, "base checkpoint")
