"""Model presets: built from configs, seeded, and round-tripping through save_pretrained / from_pretrained."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from lbw_env.config import ConfigError
from lbw_env.plant.config import ModelConfig, available_presets, load_preset, load_trainer_config
from lbw_env.plant.models import build_model, count_parameters, from_pretrained

pytestmark = pytest.mark.usefixtures("torch_threads")

VOCAB = 512
SEQ = 32


def preset_cfg(preset: str, *overrides: str) -> ModelConfig:
    return load_trainer_config({"model": {"preset": preset}}, overrides).model


def tokens(seed: int = 0, batch: int = 2, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("preset", available_presets())
def test_every_preset_builds_and_runs(preset: str) -> None:
    cfg = preset_cfg(preset)
    model = build_model(cfg, VOCAB, SEQ, seed=0)
    assert isinstance(model, Qwen2ForCausalLM if cfg.arch == "qwen2" else LlamaForCausalLM)
    assert model.config.hidden_size == cfg.hidden_size
    assert model.config.num_hidden_layers == cfg.num_layers
    assert model.config.num_key_value_heads == cfg.num_kv_heads
    assert model.config.vocab_size == VOCAB
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == cfg.tie_word_embeddings
    logits = model(input_ids=tokens(batch=1, seq=8)).logits
    assert logits.shape == (1, 8, VOCAB)
    assert torch.isfinite(logits).all()


def test_ladder_grows() -> None:
    sizes = [count_parameters(build_model(preset_cfg(p), VOCAB, SEQ, 0)) for p in ("qwen2-tiny", "qwen2-s", "qwen2-m")]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3


def test_same_seed_same_weights_and_global_rng_untouched() -> None:
    cfg = preset_cfg("qwen2-tiny")
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    a = build_model(cfg, VOCAB, SEQ, seed=7)
    assert torch.equal(torch.get_rng_state(), before), "build_model must not consume the caller's RNG"
    b = build_model(cfg, VOCAB, SEQ, seed=7)
    c = build_model(cfg, VOCAB, SEQ, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_training_mode_is_deterministic() -> None:
    """No dropout anywhere: two forward passes in train mode agree bit for bit."""
    model = build_model(preset_cfg("qwen2-tiny"), VOCAB, SEQ, seed=0).train()
    x = tokens()
    assert torch.equal(model(input_ids=x).logits, model(input_ids=x).logits)


def test_dtype_is_applied() -> None:
    model = build_model(preset_cfg("qwen2-tiny", "model.dtype=bfloat16"), VOCAB, SEQ, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize("preset", ["qwen2-tiny", "llama-tiny"])
def test_save_pretrained_round_trip(preset: str, tmp_path: Path) -> None:
    cfg = preset_cfg(preset)
    model = build_model(cfg, VOCAB, SEQ, seed=3).eval()
    # Move the weights off their initialisation so that a loader that re-initialises anything is caught.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    model.save_pretrained(tmp_path)
    loaded = from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    assert loaded.config.use_cache is False
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    x = tokens(seed=5)
    with torch.no_grad():
        assert torch.equal(model(input_ids=x).logits, loaded(input_ids=x).logits)


def test_pretrained_config_field_loads_the_checkpoint(tmp_path: Path) -> None:
    model = build_model(preset_cfg("qwen2-tiny"), VOCAB, SEQ, seed=3)
    model.save_pretrained(tmp_path)
    again = build_model(ModelConfig(pretrained=str(tmp_path)), VOCAB, SEQ, seed=99)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_unknown_preset_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_preset("qwen2-xxl")
    assert "qwen2-xxl" in str(info.value)
    assert str(info.value).startswith("model.preset:")
    for known in available_presets():
        assert known in str(info.value)


def test_missing_checkpoint_is_a_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-checkpoint-here"
    with pytest.raises(ConfigError) as info:
        from_pretrained(missing)
    assert str(info.value).startswith("model.pretrained:")
    assert str(missing) in str(info.value)
