"""Typed configuration: dataclasses with a docstring per field, YAML loading and ``key=value`` overrides.

Every config in lbw-env is a plain dataclass. Fields carry their documentation as an attribute docstring
(the string literal right below the field, as in CleanRL), which :func:`field_docs` reads back for
``--help`` output and the docs. Loading is strict: an unknown key, or a value of the wrong type, fails with
the key's dotted path and the type that was expected, before anything runs.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import math
import os
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type. The message names the key."""


# ----------------------------------------------------------------------------------------------------------
# The configs themselves
# ----------------------------------------------------------------------------------------------------------


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
    """Size of the fixed validation/test subset, in blocks: cheap, and identical for every run."""
    max_train_tokens: int = 0
    """Use only the first N train tokens (0: all). Smaller corpora make memorisation visible sooner."""

    def validate(self) -> None:
        check(self.vocab_size >= 260, "vocab_size", "an int >= 260 (256 bytes + specials)", self.vocab_size)
        check(self.seq_len >= 2, "seq_len", "an int >= 2", self.seq_len)
        check(self.batch_size >= 1, "batch_size", "an int >= 1", self.batch_size)
        check(self.eval_blocks >= 1, "eval_blocks", "an int >= 1", self.eval_blocks)
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


@dataclasses.dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule: the optimizer the governor steers but never replaces."""

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
    min_lr_ratio: float = 0.1
    """Final LR of the cosine schedule as a fraction of ``lr``."""
    steps: int = 300
    """Optimizer steps in the run (the schedule's horizon and the episode's budget)."""
    clip_norm: float = 0.0
    """Gradient-clipping baseline: max global L2 norm (0: no clipping)."""

    def validate(self) -> None:
        check(math.isfinite(self.lr) and self.lr > 0, "lr", "a positive finite float", self.lr)
        check(self.weight_decay >= 0, "weight_decay", "a float >= 0", self.weight_decay)
        check(0 <= self.beta1 < 1, "beta1", "a float in [0, 1)", self.beta1)
        check(0 <= self.beta2 < 1, "beta2", "a float in [0, 1)", self.beta2)
        check(self.eps > 0, "eps", "a positive float", self.eps)
        check(self.warmup_steps >= 0, "warmup_steps", "an int >= 0", self.warmup_steps)
        check(0 <= self.min_lr_ratio <= 1, "min_lr_ratio", "a float in [0, 1]", self.min_lr_ratio)
        check(self.steps >= 1, "steps", "an int >= 1", self.steps)
        check(self.clip_norm >= 0, "clip_norm", "a float >= 0 (0: off)", self.clip_norm)


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
    """AdamW, schedule and the clipping baseline."""
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    """Seeds, threads, caches."""
    regime: Literal["scratch", "finetune"] = "scratch"
    """``scratch`` trains a fresh model; ``finetune`` starts from the preset's cached base checkpoint."""
    base_steps: int = 600
    """``finetune``: optimizer steps used to pretrain (once, then cached) the base checkpoint at ``base_lr``."""
    base_lr: float = 3e-3
    """``finetune``: the safe LR at which the base checkpoint is pretrained (cosine, with warmup)."""
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
        check(
            math.isfinite(self.base_lr) and self.base_lr > 0,
            "base_lr",
            "a positive finite float",
            self.base_lr,
        )


# ----------------------------------------------------------------------------------------------------------
# Documentation of fields
# ----------------------------------------------------------------------------------------------------------


@cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings of a dataclass: ``{field name: the string literal below the field}``."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # pragma: no cover - classes built at run time
            continue
        body = ast.parse(source).body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """Rows ``(dotted key, type, default, doc)`` for every leaf field of a config class, recursively."""
    rows = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        rows.append((key, _type_name(tp), repr(default), docs.get(f.name, "")))
    return rows


# ----------------------------------------------------------------------------------------------------------
# Strict conversion from plain data (YAML) to dataclasses
# ----------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, Sequence):
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin in (dict, Mapping):
        k, v = get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against type ``tp`` and convert it (ints to floats, dicts to dataclasses)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path or '<root>'}: expected a mapping for {tp.__name__}, got {value!r}")
        return from_dict(tp, value, path)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{path}: expected one of {_type_name(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arg in get_args(tp):
            try:
                return _convert(value, arg, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item,) = get_args(tp)
        return [_convert(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        kt, vt = get_args(tp)
        return {_convert(k, kt, f"{path}.<key>"): _convert(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected bool, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected int, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected float, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected str, got {value!r}")
        return value
    if tp is Any:
        return value
    raise ConfigError(f"{path}: unsupported config type {tp!r}")  # pragma: no cover


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping. Unknown keys and mistyped values raise :class:`ConfigError`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key for {cls.__name__}; expected one of {', '.join(sorted(names))}")
    kwargs = {k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in data.items()}
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{path}.{e}" if path else str(e)) from None
    return obj


def check(condition: bool, key: str, expected: str, value: Any) -> None:
    """Raise ``ConfigError("key: expected ..., got value")`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(f"{key}: expected {expected}, got {value!r}")


def to_dict(obj: Any) -> Any:
    """A dataclass as plain data (for YAML/JSON records of resolved configs)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


# ----------------------------------------------------------------------------------------------------------
# YAML files and key=value overrides
# ----------------------------------------------------------------------------------------------------------


def read_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML mapping; a missing, unreadable or non-mapping file fails with its path."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p}: not found (expected a YAML file)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {p}: not valid YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["optim.lr=1e-3", "data.seq_len=64"]`` -> nested dict. Values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. optim.lr=1e-3)")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: empty key")
        value = yaml.safe_load(raw) if raw.strip() else ""
        if isinstance(value, str) and _looks_like_float(value):
            value = float(value)  # YAML 1.1 reads "1e-3" as a string
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is both a value and a section")
        node[parts[-1]] = value
    return out


def _looks_like_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return s.strip().lower() not in ("nan", "inf", "-inf", "+inf", "infinity", "-infinity")


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive merge: mappings merge key by key, everything else in ``update`` replaces ``base``."""
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def fix_yaml_floats(data: Any) -> Any:
    """PyYAML (YAML 1.1) reads ``1e-3`` as a string; turn such strings back into floats."""
    if isinstance(data, dict):
        return {k: fix_yaml_floats(v) for k, v in data.items()}
    if isinstance(data, list):
        return [fix_yaml_floats(v) for v in data]
    if isinstance(data, str) and _looks_like_float(data) and any(c in data for c in "eE."):
        return float(data)
    return data


def load(cls: type[T], data: Mapping[str, Any] | None = None, overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from defaults <- ``data`` <- ``key=value`` overrides, strictly."""
    merged = deep_merge(fix_yaml_floats(dict(data or {})), parse_overrides(overrides))
    return from_dict(cls, merged)


def load_yaml(cls: type[T], path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> T:
    """Build ``cls`` from a YAML file plus overrides; errors name the file and the key."""
    try:
        return load(cls, read_yaml(path), overrides)
    except ConfigError as e:
        if str(e).startswith("config file"):
            raise
        raise ConfigError(f"{path}: {e}") from e


def expand_presets(data: Mapping[str, Any]) -> dict[str, Any]:
    """Put ``configs/models/<model.preset>.yaml`` under the ``model`` section (explicit keys win)."""
    from .models import load_preset  # models imports this module

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
    merged = deep_merge(fix_yaml_floats(dict(data or {})), parse_overrides(overrides))
    return from_dict(TrainerConfig, expand_presets(merged))
