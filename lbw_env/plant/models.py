"""Language models: the preset ladder built from a config, or a real checkpoint through ``from_pretrained``.

Presets live as YAML under ``configs/models/`` (a Qwen2-architecture ladder standing in for Qwen2.5-3B/7B/14B,
and a Llama-architecture preset standing in for TinyLlama-1B). They are built with ``transformers``'
own ``Qwen2Config``/``LlamaConfig`` and model classes, so the same training code takes a real checkpoint
on a GPU by setting ``model.pretrained`` (plus ``dtype``/``device``).

LoRA (``model.lora.r > 0``) wraps the loaded model with peft adapters on a frozen base; the adapters are
initialised from the run seed with a private generator, so a run and its replay start from the same bytes.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.utils import logging as hf_logging

from ..config import ConfigError
from .config import LoRAConfig, ModelConfig
from .runtime import check_device

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def hf_config(cfg: ModelConfig, vocab_size: int, max_positions: int) -> Qwen2Config | LlamaConfig:
    """The transformers config of a preset. Dropout stays 0: training must be deterministic given the seed."""
    common: dict[str, Any] = dict(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=cfg.tie_word_embeddings,
        attention_dropout=0.0,
        use_cache=False,
    )
    return Qwen2Config(**common) if cfg.arch == "qwen2" else LlamaConfig(**common)


def build_model(cfg: ModelConfig, vocab_size: int, max_positions: int, seed: int) -> PreTrainedModel:
    """A freshly initialised preset (or ``from_pretrained`` when ``cfg.pretrained`` is set).

    The initialisation draws from torch's global RNG, so it runs under a forked RNG seeded with ``seed``:
    the same seed gives the same weights, and the caller's RNG state is left untouched.
    """
    check_device(cfg.device)
    if cfg.pretrained:
        return from_pretrained(cfg.pretrained, cfg.dtype, cfg.device)
    config = hf_config(cfg, vocab_size, max_positions)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config) if isinstance(config, Qwen2Config) else LlamaForCausalLM(config)
    # transformers decorates PreTrainedModel.to with functools.wraps, whose typeshed type does not bind `self`.
    return model.to(device=cfg.device, dtype=torch_dtype(cfg.dtype))  # type: ignore[call-arg]


def from_pretrained(path: str | os.PathLike[str], dtype: str = "float32", device: str = "cpu") -> PreTrainedModel:
    """Load a real checkpoint (a ``save_pretrained`` folder, or a hub id when the hub is reachable)."""
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a progress bar per env reset would drown the real output
    try:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype(dtype))
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"model.pretrained: could not load {str(path)!r} (expected a save_pretrained folder or a hub id): {e}"
        ) from e
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    model.config.use_cache = False
    # transformers decorates PreTrainedModel.to with functools.wraps, whose typeshed type does not bind `self`.
    return model.to(device)  # type: ignore[arg-type]


def apply_lora(model: PreTrainedModel, cfg: LoRAConfig, seed: int) -> torch.nn.Module:
    """Wrap ``model`` with peft LoRA adapters per ``cfg``; afterwards only the adapters require gradients.

    The base weights are frozen in their loaded dtype; peft keeps the adapters in float32 even on a bf16 base
    (``autocast_adapter_dtype``), the usual mixed-precision LoRA set-up. The adapters are then initialised by
    :func:`init_lora_weights` from ``seed``, not by peft from the global RNG.
    """
    from peft import LoraConfig, get_peft_model  # imported here: full-parameter runs never need peft

    if not cfg.r:
        raise ValueError("apply_lora: lora.r is 0 (LoRA off)")
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in cfg.target_modules if m not in names]
    if missing:
        # peft would only complain if *no* module matched; a typo in one name must not silently drop adapters.
        raise ConfigError(f"model.lora.target_modules: {missing} not found in {type(model).__name__}")
    peft_cfg = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,  # type: ignore[arg-type]  # peft annotates int, but only ever divides it (alpha / r)
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # get_peft_model builds the adapter Linear layers, which draws from the global RNG: fork it, so LoRA does
    # not shift the caller's random stream (the weights themselves come from init_lora_weights below).
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # transformers 5 deprecates an attribute peft still reads; the warning says nothing about this run.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        peft_model = get_peft_model(model, peft_cfg)
    init_lora_weights(peft_model, seed)
    return peft_model


@torch.no_grad()
def init_lora_weights(model: torch.nn.Module, seed: int) -> None:
    """(Re-)initialise every LoRA adapter as peft's default does (A: Kaiming-uniform, B: zero), from ``seed``.

    Drawn on the CPU with a private generator in module order, then copied to the adapter's device and dtype:
    the same seed gives the same adapters on any device, and the global RNG is untouched.
    """
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    found = False
    for name, p in model.named_parameters():
        if ".lora_A." in name:
            w = torch.empty(p.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
            p.copy_(w)
            found = True
        elif ".lora_B." in name:
            p.zero_()
    if not found:
        raise ValueError("init_lora_weights: the model has no LoRA adapters")


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
