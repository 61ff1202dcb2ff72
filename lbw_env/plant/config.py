"""The plant's configuration: data, model, optimizer, faults, runtime and the trainer that combines them.

Each dataclass documents its fields (attribute docstrings, read back by :func:`lbw_env.config.field_docs`);
loading is the strict machinery of :mod:`lbw_env.config`. Model presets are YAML files under
``configs/models/`` and are expanded under the ``model`` section before a config is built.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from ..config import ConfigError, check, config_dir, config_names, deep_merge, from_dict, parse_overrides, read_yaml

MAX_VOCAB = 1 << 18
"""Largest BPE vocabulary a config may ask for (262,144: above every released LLM tokenizer's, e.g. Qwen2.5's
151,936). Larger, the tokenizer trainer asks for terabytes and aborts the process."""


@dataclasses.dataclass
class DataConfig:
    """Where the WikiText text comes from and how it becomes batches of token blocks."""

    root: str = ""
    """Data root holding WikiText folders (``wikitext-2/wiki.train.tokens`` ...). Empty: ``$LBW_DATA_DIR``."""
    source: Literal["local", "hub"] = "local"
    """``local`` reads files under ``root``; ``hub`` calls ``datasets.load_dataset(hub_repo, hub_config)``."""
    train_dir: str = "wikitext-2"
    """Folder under ``root`` holding the train split (``wiki.train.tokens``/``.raw`` or ``train-*.parquet``)."""
    eval_dir: str = "wikitext-103"
    """Folder under ``root`` holding the valid/test splits. WikiText-103's own evaluation text by default."""
    hub_repo: str = "Salesforce/wikitext"
    """Dataset repository (or a local folder laid out like it) for ``source: hub``."""
    hub_config: str = "wikitext-103-raw-v1"
    """Dataset config for ``source: hub``: one of the four official WikiText configs."""
    tokenizer: str = "bpe"
    """``bpe``: a byte-level BPE trained on the train split and cached; otherwise a path or hub id for
    ``AutoTokenizer.from_pretrained`` (the tokenizer of a real checkpoint)."""
    vocab_size: int = 4096
    """Vocabulary size of the trained BPE (ignored for a pretrained tokenizer). The LM head dominates small
    models' cost, so small vocabularies keep CPU runs fast."""
    seq_len: int = 128
    """Tokens per training block (the model sees ``seq_len`` inputs and predicts ``seq_len`` targets)."""
    batch_size: int = 8
    """Blocks per optimizer step."""
    eval_blocks: int = 64
    """Size of the fixed validation subset, in blocks: cheap (it is evaluated during a run for curves and
    time-to-target), and identical for every run."""
    test_blocks: int = 256
    """Size of the fixed test subset, in blocks (the headline metric, evaluated at the start and the end of a
    run). Measured with ``benchmarks/eval_noise.py``: with 32 blocks, which blocks were chosen moved the
    lr_stress test perplexity by 4.9 % while seeds moved it by 0.9 %; 256 blocks cut the paired block noise to
    about 0.006 in log-perplexity, below the seed spread (0.009), for 8x the cost of 32 blocks (~4 s on qwen2-s)."""
    max_train_tokens: int = 0
    """Use only the first N train tokens (0: all). Smaller corpora make memorisation visible sooner."""

    def validate(self) -> None:
        check(
            260 <= self.vocab_size <= MAX_VOCAB,
            "vocab_size",
            f"an int in [260, {MAX_VOCAB}] (256 bytes + specials; a real tokenizer's size at most)",
            self.vocab_size,
        )
        check(self.seq_len >= 2, "seq_len", "an int >= 2", self.seq_len)
        check(self.batch_size >= 1, "batch_size", "an int >= 1", self.batch_size)
        check(self.eval_blocks >= 1, "eval_blocks", "an int >= 1", self.eval_blocks)
        check(self.test_blocks >= 1, "test_blocks", "an int >= 1", self.test_blocks)
        check(self.max_train_tokens >= 0, "max_train_tokens", "an int >= 0", self.max_train_tokens)


@dataclasses.dataclass
class LoRAConfig:
    """Low-rank adapters (peft LoRA) on a frozen base: the paper's fine-tune regime. ``r: 0`` = full-parameter."""

    r: int = 0
    """Adapter rank; 0 turns LoRA off (every parameter trains: the full-parameter regime, the default)."""
    alpha: float = 16.0
    """LoRA scaling numerator: the adapter update is scaled by ``alpha / r``."""
    dropout: float = 0.0
    """Dropout on the adapter input. 0 keeps training deterministic given the seed (replay, rollback, tests)."""
    target_modules: list[str] = dataclasses.field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Names (suffixes) of the linear layers that get adapters: by default every attention and MLP projection
    of the Qwen2/Llama blocks; embeddings and the LM head stay frozen."""

    def validate(self) -> None:
        check(self.r >= 0, "r", "an int >= 0 (0: no LoRA)", self.r)
        check(math.isfinite(self.alpha) and self.alpha > 0, "alpha", "a positive finite float", self.alpha)
        check(0 <= self.dropout < 1, "dropout", "a float in [0, 1)", self.dropout)
        check(not self.r or bool(self.target_modules), "target_modules", "a non-empty list", self.target_modules)


@dataclasses.dataclass
class ModelConfig:
    """The language model: a preset built from a config, or a real checkpoint."""

    preset: str = "qwen2-tiny"
    """Name of a preset under ``configs/models/`` (ignored when ``pretrained`` is set)."""
    arch: Literal["qwen2", "llama"] = "qwen2"
    """Architecture of a preset: Qwen2 (the paper's family) or Llama (standing in for TinyLlama)."""
    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Transformer blocks."""
    num_heads: int = 4
    """Attention heads."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention, as in Qwen2.5)."""
    intermediate_size: int = 256
    """Width of the MLP."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the LM head (as the small Qwen2.5 models do)."""
    pretrained: str = ""
    """Path (or hub id, when online) of a real checkpoint for ``from_pretrained``; empty: build the preset."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Parameter dtype. float32 on CPU; bfloat16 for real checkpoints on a GPU."""
    device: str = "cpu"
    """Torch device (``cpu``, ``cuda``, ``cuda:1`` ...)."""
    lora: LoRAConfig = dataclasses.field(default_factory=LoRAConfig)
    """LoRA adapters on the loaded weights (``lora.r > 0``); only the adapters train. Needs ``regime: finetune``
    or ``pretrained``: adapters on a random initialisation would train a low-rank perturbation of noise."""

    def validate(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            check(getattr(self, name) >= 1, name, "an int >= 1", getattr(self, name))
        check(self.hidden_size % self.num_heads == 0, "hidden_size", "a multiple of num_heads", self.hidden_size)
        check(
            self.num_heads % self.num_kv_heads == 0,
            "num_kv_heads",
            "a divisor of num_heads",
            self.num_kv_heads,
        )


OptimizerName = Literal["adamw", "prodigy", "dadapt_adam", "schedulefree_adamw"]
"""The torch optimizers the plant can train with (:mod:`lbw_env.plant.optimizers` builds them)."""


@dataclasses.dataclass
class ZClipConfig:
    """ZClip (Kumar et al. 2025, the ``zclip`` package): adaptive gradient clipping by the z-score of the gradient
    norm against an EMA of its mean and variance. Defaults are the package's published ones."""

    alpha: float = 0.97
    """EMA weight of the norm's mean and variance (0.97: about 33 steps of memory; the package default)."""
    z_thresh: float = 2.5
    """A norm more than this many EMA standard deviations above the EMA mean is clipped (package default)."""
    warmup_steps: int = 25
    """Applied steps whose norms are collected before the EMA starts; no adaptive clipping before (package
    default; only the fixed cap ``optim.clip_norm`` applies then)."""
    mode: Literal["zscore", "percentile"] = "zscore"
    """``zscore``: clip only outliers (z > z_thresh), as ``clip_option`` says; ``percentile``: always cap at
    mean + z_thresh x std. The package's default is ``zscore``."""
    clip_option: Literal["adaptive_scaling", "mean"] = "adaptive_scaling"
    """``zscore`` mode: clip an outlier to mean + z_thresh x std / (z / z_thresh) (larger outliers are cut
    harder; package default) or to the EMA mean."""
    clip_factor: float = 1.0
    """Multiplier on the adaptive threshold (package default 1.0; 0.5-0.9 clip more aggressively)."""
    skip_update_on_spike: bool = False
    """Leave the EMA alone on a clipped step (package default False: the EMA takes the clipped norm)."""

    def validate(self) -> None:
        check(0 < self.alpha < 1, "alpha", "a float in (0, 1)", self.alpha)
        check(math.isfinite(self.z_thresh) and self.z_thresh > 0, "z_thresh", "a positive float", self.z_thresh)
        check(self.warmup_steps >= 1, "warmup_steps", "an int >= 1", self.warmup_steps)
        check(
            math.isfinite(self.clip_factor) and self.clip_factor > 0,
            "clip_factor",
            "a positive float",
            self.clip_factor,
        )


@dataclasses.dataclass
class OptimConfig:
    """The optimizer and its learning-rate schedule: what the governor steers but never replaces."""

    name: OptimizerName = "adamw"
    """The torch optimizer: ``adamw`` (torch AdamW), ``prodigy`` (prodigyopt), ``dadapt_adam`` (D-Adaptation
    Adam) or ``schedulefree_adamw`` (Schedule-Free AdamW). The LR-free two take ``lr`` as a multiplier of the
    step size they estimate (their READMEs: 1.0); schedule-free needs ``schedule: constant`` (it replaces the
    decay; the warmup stays the plant's). Settings and their reasons: :mod:`lbw_env.plant.optimizers`."""
    lr: float = 3e-3
    """Peak (base) learning rate of the schedule."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay."""
    beta1: float = 0.9
    """AdamW first-moment decay."""
    beta2: float = 0.95
    """AdamW second-moment decay."""
    eps: float = 1e-8
    """AdamW epsilon."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Shape after warmup: cosine decay to ``min_lr_ratio * lr``, or constant."""
    warmup_steps: int = 20
    """Linear warmup from 0 to ``lr`` (0: start at full LR, the stress case for fine-tuning)."""
    warmup_fraction: float = 0.0
    """Warmup as a fraction of ``steps`` (0: use ``warmup_steps``). When set, it is resolved on load into
    ``warmup_steps = max(1, round(fraction x steps))`` and reset to 0, so that one override gives each scenario
    its own length (0.1: 20 of 200 steps, 16 of 160) and the resolved config is the one the explicit
    ``warmup_steps`` would give: the same run, the same config hash."""
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of ``lr``."""
    steps: int = 300
    """Optimizer steps in the run (the schedule's horizon and the episode's budget)."""
    clip_norm: float = 0.0
    """Gradient-clipping baseline: max global L2 norm (0: no clipping). With ``clip: zclip`` the fixed cap on
    top of ZClip (the package's ``max_grad_norm``, default 1.0 there)."""
    clip: Literal["norm", "zclip"] = "norm"
    """``norm``: clip at the fixed ``clip_norm``; ``zclip``: adaptive z-score clipping (``zclip``), capped by
    ``clip_norm`` when that is > 0."""
    zclip: ZClipConfig = dataclasses.field(default_factory=ZClipConfig)
    """Settings of ``clip: zclip`` (ignored otherwise)."""

    def validate(self) -> None:
        check(math.isfinite(self.lr) and self.lr > 0, "lr", "a positive finite float", self.lr)
        # Comparisons alone let inf through (inf >= 0); NaN fails them, but say "finite" for both.
        finite = math.isfinite
        wd = self.weight_decay
        check(finite(wd) and wd >= 0, "weight_decay", "a finite float >= 0", wd)
        check(0 <= self.beta1 < 1, "beta1", "a float in [0, 1)", self.beta1)
        check(0 <= self.beta2 < 1, "beta2", "a float in [0, 1)", self.beta2)
        check(finite(self.eps) and self.eps > 0, "eps", "a positive finite float", self.eps)
        check(self.warmup_steps >= 0, "warmup_steps", "an int >= 0", self.warmup_steps)
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a float in [0, 1]", self.min_lr_ratio)
        check(self.steps >= 1, "steps", "an int >= 1", self.steps)
        clip = self.clip_norm
        check(finite(clip) and clip >= 0, "clip_norm", "a finite float >= 0 (0: off)", clip)
        frac = self.warmup_fraction
        check(0 <= frac < 1, "warmup_fraction", "a float in [0, 1) (0: use warmup_steps)", frac)
        check(
            self.name != "schedulefree_adamw" or self.schedule == "constant",
            "schedule",
            "constant with name schedulefree_adamw (schedule-free averaging replaces the decay)",
            self.schedule,
        )
        if frac > 0:  # resolved once, here, with the steps of this config (see the field's docstring)
            self.warmup_steps, self.warmup_fraction = max(1, round(frac * self.steps)), 0.0


@dataclasses.dataclass
class FaultConfig:
    """One injected runtime fault: what happens, from which step, for how long."""

    kind: Literal["lr_shock", "bad_batch", "nan_loss", "grad_noise"] = "lr_shock"
    """``lr_shock`` multiplies the LR; ``bad_batch`` feeds uniformly random tokens; ``nan_loss`` makes the
    loss NaN; ``grad_noise`` adds Gaussian noise of ``magnitude`` x the gradient's RMS to every gradient."""
    start: int = 0
    """First optimizer step affected."""
    length: int = 1
    """Number of consecutive steps affected."""
    magnitude: float = 1.0
    """LR multiplier for ``lr_shock``; relative noise scale for ``grad_noise``; unused otherwise."""

    def validate(self) -> None:
        check(self.start >= 0, "start", "an int >= 0", self.start)
        check(self.length >= 1, "length", "an int >= 1", self.length)
        check(
            math.isfinite(self.magnitude) and self.magnitude >= 0,
            "magnitude",
            "a finite float >= 0",
            self.magnitude,
        )


@dataclasses.dataclass
class RuntimeConfig:
    """Process-level settings: seeds, threads, caches."""

    seed: int = 0
    """Seed of the model initialisation, batch order and faults (an env's ``reset(seed)`` overrides it)."""
    threads: int = 0
    """Torch intra-op threads (0: leave torch's default). Two processes x 2 threads on 2 cores thrash."""
    mallopt: bool = True
    """Tune glibc malloc (mmap/trim thresholds) so small-model steps stop paying for page faults."""
    cache_dir: str = ""
    """Cache root for tokenizers, token arrays and base checkpoints. Empty: ``$LBW_CACHE`` or
    ``~/.cache/lbw_env``."""


@dataclasses.dataclass
class TrainerConfig:
    """Everything one training run (the plant) needs."""

    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    """The text and its batching."""
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    """The language model."""
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    """The optimizer, its schedule and the clipping baselines."""
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    """Seeds, threads, caches."""
    regime: Literal["scratch", "finetune"] = "scratch"
    """``scratch`` trains a fresh model; ``finetune`` starts from the preset's cached base checkpoint."""
    base_steps: int = 600
    """``finetune``: optimizer steps used to pretrain (once, then cached) the base checkpoint at ``base_lr``."""
    base_lr: float = 3e-3
    """``finetune``: the safe LR at which the base checkpoint is pretrained (cosine, with warmup)."""
    base_seed: int | None = None
    """``finetune``: seed of the base checkpoint's pretraining (initialisation and batch order); None: 0, the
    one shared base of every scenario before the test splits. Test scenarios of fine-tune families use another
    base (e.g. 1), so that what is reported was never fine-tuned from the weights used for training and tuning."""
    faults: list[FaultConfig] = dataclasses.field(default_factory=list)
    """Injected runtime faults (LR shocks, bad batches, NaN losses, gradient noise)."""

    def validate(self) -> None:
        check(self.base_steps >= 1, "base_steps", "an int >= 1", self.base_steps)
        check(
            not self.model.lora.r or self.regime == "finetune" or bool(self.model.pretrained),
            "model.lora.r",
            "0 unless regime is finetune or model.pretrained is set (LoRA adapts loaded weights)",
            self.model.lora.r,
        )
        check(self.base_seed is None or self.base_seed >= 0, "base_seed", "an int >= 0 or null", self.base_seed)
        check(
            math.isfinite(self.base_lr) and self.base_lr > 0,
            "base_lr",
            "a positive finite float",
            self.base_lr,
        )


LATER_FIELDS: dict[str, Any] = {
    "optim.name": "adamw",
    "optim.warmup_fraction": 0.0,
    "optim.clip": "norm",
    "optim.zclip": dataclasses.asdict(ZClipConfig()),
}
"""Trainer fields added after evaluation records were first committed, with the value that reproduces the runs
made before them (dotted paths into ``to_dict(TrainerConfig)``). A config hash leaves a field out while it holds
that value (:func:`hashable_trainer`), so that committed records stay valid. Add every new field here."""


def hashable_trainer(data: Mapping[str, Any]) -> dict[str, Any]:
    """``to_dict(TrainerConfig)`` without the :data:`LATER_FIELDS` that hold their old-behaviour value."""
    out = copy.deepcopy(dict(data))
    for path, old in LATER_FIELDS.items():
        *parents, leaf = path.split(".")
        node: Any = out
        for key in parents:
            node = node.get(key) if isinstance(node, Mapping) else None
        if isinstance(node, dict) and leaf in node and node[leaf] == old:
            del node[leaf]
    return out


def available_presets() -> list[str]:
    """Model presets: ``configs/models/<name>.yaml``."""
    return config_names("models")


def load_preset(name: str) -> dict[str, Any]:
    """The model section stored in ``configs/models/<name>.yaml`` (a mapping of ModelConfig fields)."""
    path = config_dir() / "models" / f"{name}.yaml"
    if name not in available_presets():  # a name, not a path (../suites/x read a suite file as a model)
        raise ConfigError(f"model.preset: unknown preset {name!r}; expected one of {', '.join(available_presets())}")
    data = read_yaml(path)
    data.setdefault("preset", name)
    return data


def expand_presets(data: Mapping[str, Any]) -> dict[str, Any]:
    """Put ``configs/models/<model.preset>.yaml`` under the ``model`` section (explicit keys win)."""
    out = dict(data)
    if not isinstance(out.get("model") or {}, Mapping):
        return out  # not a mapping: from_dict reports it with the key's path
    model = dict(out.get("model") or {})
    if "preset" in model and not model.get("pretrained"):
        model = deep_merge(load_preset(model["preset"]), model)
    if model:
        out["model"] = model
    return out


def load_trainer_config(data: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> TrainerConfig:
    """A :class:`TrainerConfig` from plain data and overrides, with the model preset expanded."""
    merged = deep_merge(dict(data or {}), parse_overrides(overrides))
    return from_dict(TrainerConfig, expand_presets(merged))
