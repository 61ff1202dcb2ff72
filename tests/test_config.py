"""Typed configs: strict loading, errors that name the key (and the file), overrides, preset expansion."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbw_env.config import (
    ConfigError,
    config_dir,
    describe,
    field_docs,
    load,
    load_yaml,
    parse_overrides,
    read_yaml,
    to_dict,
)
from lbw_env.plant.config import (
    DataConfig,
    FaultConfig,
    ModelConfig,
    OptimConfig,
    RuntimeConfig,
    TrainerConfig,
    available_presets,
    load_trainer_config,
)

ALL_CONFIGS = [DataConfig, ModelConfig, OptimConfig, FaultConfig, RuntimeConfig, TrainerConfig]


def error_of(data: dict[str, typing.Any] | None = None, overrides: tuple[str, ...] = ()) -> str:
    """The ConfigError message of loading ``data`` + ``overrides`` (fails the test if nothing is raised)."""
    with pytest.raises(ConfigError) as info:
        load_trainer_config(data, overrides)
    return str(info.value)


# -- defaults and documentation -----------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    cfg = load(TrainerConfig)
    assert cfg == TrainerConfig()
    assert load_trainer_config() == load_trainer_config({"model": {"preset": "qwen2-tiny"}})


@pytest.mark.parametrize("cls", ALL_CONFIGS, ids=lambda c: c.__name__)
def test_every_field_is_documented(cls: type) -> None:
    docs = field_docs(cls)
    missing = [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)]
    assert not missing, f"{cls.__name__}: fields without a docstring: {missing}"


def test_describe_lists_dotted_leaf_keys() -> None:
    rows = {key: (tp, default, doc) for key, tp, default, doc in describe(TrainerConfig)}
    assert rows["optim.lr"][0] == "float"
    assert rows["optim.lr"][1] == repr(OptimConfig().lr)
    assert rows["optim.lr"][2]
    assert "data.seq_len" in rows and "model.preset" in rows and "runtime.seed" in rows
    assert not any(key in rows for key in ("optim", "data", "model", "runtime"))


def test_round_trip_through_plain_data() -> None:
    cfg = load_trainer_config(
        {"model": {"preset": "qwen2-m"}, "faults": [{"kind": "grad_noise", "start": 3, "magnitude": 2.0}]},
        ["optim.lr=1e-3"],
    )
    assert load(TrainerConfig, to_dict(cfg)) == cfg


# -- errors name the key ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"optim": {"lrr": 1e-3}}, "optim.lrr"),
        ({"data": {"seq_len": 64, "seqlen": 64}}, "data.seqlen"),
        ({"runtime": {"seed": 0, "sed": 1}}, "runtime.sed"),
        ({"faults": [{"kind": "nan_loss"}, {"kind": "nan_loss", "begin": 3}]}, "faults[1].begin"),
        ({"optimizer": {}}, "optimizer"),
    ],
)
def test_unknown_key_names_its_dotted_path(data: dict[str, typing.Any], path: str) -> None:
    message = error_of(data)
    assert message.startswith(f"{path}:")
    assert "unknown key" in message


@pytest.mark.parametrize(
    ("data", "path", "expected"),
    [
        ({"data": {"seq_len": "long"}}, "data.seq_len", "int"),
        ({"data": {"seq_len": 64.5}}, "data.seq_len", "int"),
        ({"data": {"batch_size": True}}, "data.batch_size", "int"),
        ({"optim": {"lr": "fast"}}, "optim.lr", "float"),
        ({"optim": {"lr": True}}, "optim.lr", "float"),
        ({"model": {"tie_word_embeddings": "yes"}}, "model.tie_word_embeddings", "bool"),
        ({"model": {"arch": "gpt2"}}, "model.arch", "'qwen2' | 'llama'"),
        ({"optim": {"schedule": "linear"}}, "optim.schedule", "'cosine' | 'constant'"),
        ({"faults": {"kind": "nan_loss"}}, "faults", "list[FaultConfig]"),
        ({"faults": [{"kind": "meteor"}]}, "faults[0].kind", "'lr_shock'"),
        ({"optim": 3}, "optim", "OptimConfig"),
        ({"runtime": {"cache_dir": 7}}, "runtime.cache_dir", "str"),
    ],
)
def test_wrong_type_names_path_and_expected_type(data: dict[str, typing.Any], path: str, expected: str) -> None:
    message = error_of(data)
    assert message.startswith(f"{path}:"), message
    assert expected in message, message


def test_int_is_accepted_where_a_float_is_expected() -> None:
    cfg = load_trainer_config({"optim": {"lr": 1, "clip_norm": 2}})
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert isinstance(cfg.optim.clip_norm, float)


@pytest.mark.parametrize(
    ("override", "path"),
    [
        ("optim.lr=-1e-3", "optim.lr"),
        ("optim.lr=0", "optim.lr"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.beta2=1.0", "optim.beta2"),
        ("optim.clip_norm=-1", "optim.clip_norm"),
        ("optim.steps=0", "optim.steps"),
        ("data.seq_len=1", "data.seq_len"),
        ("data.vocab_size=100", "data.vocab_size"),
        ("model.num_kv_heads=3", "model.num_kv_heads"),
        ("model.hidden_size=65", "model.hidden_size"),
        ("base_steps=0", "base_steps"),
        ("base_lr=-1", "base_lr"),
        ("faults=[{kind: lr_shock, length: 0}]", "faults[0].length"),
        ("faults=[{kind: grad_noise, magnitude: -1}]", "faults[0].magnitude"),
    ],
)
def test_invalid_values_name_their_key(override: str, path: str) -> None:
    message = error_of(overrides=(override,))
    assert message.startswith(f"{path}: expected"), message


def test_negative_lr_error_names_optim_lr() -> None:
    message = error_of({"optim": {"lr": -0.01}})
    assert message.startswith("optim.lr:")
    assert "-0.01" in message


def test_non_mapping_model_section_is_a_config_error() -> None:
    assert error_of({"model": "qwen2-tiny"}).startswith("model:")


# -- overrides ----------------------------------------------------------------------------------------------


def test_override_parsing_types() -> None:
    parsed = parse_overrides(
        [
            "optim.lr=1e-3",
            "optim.eps=1.0E-8",
            "data.seq_len=64",
            "regime=finetune",
            "model.tie_word_embeddings=false",
            "runtime.cache_dir=",
        ]
    )
    # Plain YAML scalars, as in a file: PyYAML (YAML 1.1) reads "1e-3" as a string; from_dict makes it a float.
    assert parsed == {
        "optim": {"lr": "1e-3", "eps": 1e-8},
        "data": {"seq_len": 64},
        "regime": "finetune",
        "model": {"tie_word_embeddings": False},
        "runtime": {"cache_dir": ""},
    }
    assert type(parsed["data"]["seq_len"]) is int
    cfg = load(TrainerConfig, parsed)
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float


def test_overrides_win_over_data_and_are_checked() -> None:
    cfg = load_trainer_config({"optim": {"lr": 3e-3, "steps": 50}}, ["optim.lr=1e-3", "data.seq_len=64"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.steps == 50 and cfg.data.seq_len == 64
    assert error_of(overrides=("optim.lr=fast",)).startswith("optim.lr: expected float")
    assert error_of(overrides=("optim.lrr=1",)).startswith("optim.lrr:")


def test_override_with_a_fault_list() -> None:
    cfg = load_trainer_config(overrides=["faults=[{kind: nan_loss, start: 5, length: 2}]"])
    assert cfg.faults == [FaultConfig(kind="nan_loss", start=5, length=2)]


@pytest.mark.parametrize("item", ["optim.lr", "=3", "optim..lr=3", "optim.lr=1e-3 optim.lr.x=2"])
def test_malformed_overrides(item: str) -> None:
    items = item.split(" ")
    with pytest.raises(ConfigError, match="override"):
        parse_overrides(items)


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=1e-12, max_value=1e3, allow_nan=False, allow_infinity=False))
def test_float_overrides_round_trip(lr: float) -> None:
    for text in (repr(lr), f"{lr:e}", f"{lr:g}"):
        cfg = load_trainer_config(overrides=[f"optim.lr={text}"])
        assert cfg.optim.lr == float(text)
        assert type(cfg.optim.lr) is float


# -- presets ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", available_presets())
def test_preset_expansion(preset: str) -> None:
    cfg = load_trainer_config({"model": {"preset": preset}})
    stored = read_yaml(config_dir() / "models" / f"{preset}.yaml")
    assert stored, preset
    for key, value in stored.items():
        assert getattr(cfg.model, key) == value, f"{preset}: model.{key}"
    assert cfg.model.preset == preset


def test_expected_presets_exist() -> None:
    assert {"qwen2-tiny", "qwen2-s", "qwen2-m", "qwen2-l", "llama-tiny"} <= set(available_presets())
    assert load_trainer_config({"model": {"preset": "llama-tiny"}}).model.arch == "llama"


def test_explicit_model_keys_win_over_the_preset() -> None:
    cfg = load_trainer_config({"model": {"preset": "qwen2-m"}}, ["model.num_layers=1"])
    assert cfg.model.num_layers == 1
    assert cfg.model.hidden_size == read_yaml(config_dir() / "models" / "qwen2-m.yaml")["hidden_size"]


def test_preset_by_override() -> None:
    cfg = load_trainer_config(overrides=["model.preset=qwen2-s"])
    assert cfg.model.hidden_size == read_yaml(config_dir() / "models" / "qwen2-s.yaml")["hidden_size"]


def test_unknown_preset_is_named() -> None:
    message = error_of({"model": {"preset": "qwen9-huge"}})
    assert message.startswith("model.preset:")
    assert "qwen9-huge" in message
    assert "qwen2-tiny" in message  # and the known ones are listed


def test_pretrained_skips_preset_expansion() -> None:
    cfg = load_trainer_config({"model": {"preset": "no-such-preset", "pretrained": "/some/checkpoint"}})
    assert cfg.model.pretrained == "/some/checkpoint"


# -- YAML files ---------------------------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_yaml_file_loads_with_float_fix(tmp_path: Path) -> None:
    path = write(tmp_path / "run.yaml", "optim:\n  lr: 1e-3\n  eps: 1.0e-8\ndata:\n  seq_len: 64\n")
    cfg = load_yaml(TrainerConfig, path, ["optim.steps=7"])
    assert cfg.optim.lr == 1e-3 and type(cfg.optim.lr) is float
    assert cfg.optim.eps == 1e-8 and cfg.data.seq_len == 64 and cfg.optim.steps == 7


@dataclasses.dataclass
class Floats:
    """A config with every place a YAML 1.1 float string can land."""

    lr: float = 0.1
    """A float field."""
    rates: list[float] = dataclasses.field(default_factory=list)
    """A list of floats."""
    name: str = ""
    """A str field: a string that is no float stays a string."""
    tag: str = ""
    """A str field given a float-looking string: it stays a string too (the field says str)."""
    extra: dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    """Untyped values (like SB3 hyperparameters): ``1e-3`` becomes the float it spells."""
    maybe: float | None = None
    """An optional float."""


FLOATS_EXPECTED = Floats(
    lr=1e-3,
    rates=[1e-3, 2.5e-4, 1.0],
    name="1e-3x",
    tag="1e-3",
    extra={"learning_rate": 3e-4, "policy": "Mlp"},
    maybe=1e-3,
)


def test_yaml_1e_minus_3_reaches_float_fields_without_post_processing(tmp_path: Path) -> None:
    text = (
        "lr: 1e-3\nrates: [1e-3, 2.5e-4, 1]\nname: 1e-3x\ntag: '1e-3'\n"
        "extra: {learning_rate: 3e-4, policy: Mlp}\nmaybe: 1e-3\n"
    )
    raw = read_yaml(write(tmp_path / "floats.yaml", text))
    assert raw["lr"] == "1e-3" and raw["rates"][0] == "1e-3"  # what PyYAML gives: the loader must cope
    cfg = load_yaml(Floats, tmp_path / "floats.yaml")
    assert cfg == FLOATS_EXPECTED
    assert type(cfg.lr) is float and all(type(x) is float for x in cfg.rates)
    assert type(cfg.name) is str and type(cfg.tag) is str
    assert type(cfg.extra["learning_rate"]) is float and type(cfg.maybe) is float


def test_override_1e_minus_3_reaches_float_fields() -> None:
    cfg = load(
        Floats,
        overrides=[
            "lr=1e-3",
            "rates=[1e-3, 2.5e-4, 1]",
            "name=1e-3x",
            "tag='1e-3'",
            "extra={learning_rate: 3e-4, policy: Mlp}",
            "maybe=1e-3",
        ],
    )
    assert cfg == FLOATS_EXPECTED
    assert type(cfg.lr) is float and all(type(x) is float for x in cfg.rates)
    assert type(cfg.name) is str and type(cfg.tag) is str


@pytest.mark.parametrize("text", ["nan", "inf", "-infinity", "fast", "1e-3x"])
def test_a_non_float_string_is_no_float(text: str) -> None:
    with pytest.raises(ConfigError, match="lr: expected float"):
        load(Floats, {"lr": text})
    assert load(Floats, {"extra": {"x": text}}).extra == {"x": text}


def test_inherited_fields_keep_their_docs_and_checks() -> None:
    from lbw_env.control.governance import GovernanceConfig
    from lbw_env.env import EnvConfig

    docs = field_docs(EnvConfig)
    assert [f.name for f in dataclasses.fields(EnvConfig)][:4] == [f.name for f in dataclasses.fields(GovernanceConfig)]
    assert all(docs.get(f.name) for f in dataclasses.fields(EnvConfig))
    assert docs["window"] == field_docs(GovernanceConfig)["window"]
    rows = {key: doc for key, _, _, doc in describe(EnvConfig)}
    assert rows["decision_interval"] and rows["envelope.max_rollbacks"] and rows["initial_cache"]
    cfg = load(EnvConfig, {"decision_interval": 4, "envelope": {"lr_scale_min": "1e-3"}}, ["healthy_ratio=1.5"])
    assert (cfg.decision_interval, cfg.envelope.lr_scale_min, cfg.healthy_ratio) == (4, 1e-3, 1.5)
    with pytest.raises(ConfigError, match=r"^window: expected an int >= 1"):
        load(EnvConfig, {"window": 0})
    with pytest.raises(ConfigError, match=r"^initial_cache: expected an int >= 1"):
        load(EnvConfig, {"initial_cache": 0})


def test_empty_yaml_file_gives_defaults(tmp_path: Path) -> None:
    assert load_yaml(TrainerConfig, write(tmp_path / "empty.yaml", "")) == TrainerConfig()


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("optim:\n  lr: [1,\n", "not valid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("optim:\n  lr: 1e-3\n  bogus: 1\n", "optim.bogus"),
        ("data:\n  seq_len: long\n", "data.seq_len: expected int"),
        ("optim:\n  lr: -1.0\n", "optim.lr"),
    ],
)
def test_yaml_errors_name_the_file(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_yaml(TrainerConfig, path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)


def test_missing_yaml_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.yaml"
    with pytest.raises(ConfigError, match=r"nowhere\.yaml"):
        load_yaml(TrainerConfig, path)


def test_override_error_with_a_file_names_both(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.yaml", "optim:\n  lr: 1e-3\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(TrainerConfig, path, ["optim.lr=-2"])
    assert str(path) in str(info.value) and "optim.lr" in str(info.value)
