"""Strict typed configs (common/config.py): unknown keys, wrong types, --set overrides, round trips."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
import yaml

from common.config import (
    ConfigError,
    DataConfig,
    LogConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    parse_overrides,
)


@dataclass
class ToyModelConfig:
    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel: tuple[int, int] = (3, 3)
    name: str = "toy"
    dropout: Optional[float] = None  # noqa: UP045 - Optional on purpose: both spellings must work
    norm: Literal["batch", "group", "none"] = "batch"
    widths: dict[str, int] = field(default_factory=dict)
    act: str = field(default="relu", metadata={"choices": ("relu", "silu")})
    depth: int | None = 4


@dataclass
class ToyConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)


def write(tmp_path, text: str, name: str = "x.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(tmp_path, text: str, overrides=None) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(ToyConfig, path, overrides or [])
    message = str(info.value)
    assert "\n" not in message
    return message


def test_shared_sections_match_the_contract():
    assert config_to_dict(DataConfig()) == {"root": "data/synthetic", "resolution": 32, "cache": "", "hflip": True}
    assert config_to_dict(TrainConfig()) == {
        "seed": 0, "device": "auto", "precision": "auto", "channels_last": False, "compile": False,
        "batch_size": 64, "lr": 2e-4, "total_images": 100000, "checkpoint_every_images": 20000,
        "grad_clip": 0.0, "ema_decay": 0.0, "num_workers": 0,
    }
    assert config_to_dict(LogConfig()) == {"every_images": 2000, "image_every_images": 20000, "tensorboard": True}
    assert issubclass(ConfigError, ValueError)


def test_load_values_and_defaults(tmp_path):
    path = write(tmp_path, "train:\n  lr: 1e-4\n  batch_size: 8\nmodel:\n  channels: [8, 16, 32]\n  dropout: 0.1\n")
    cfg = load_config(ToyConfig, path)
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)  # 1e-4 is a float, not str
    assert cfg.train.batch_size == 8 and cfg.train.seed == 0
    assert cfg.model.channels == [8, 16, 32] and cfg.model.kernel == (3, 3) and cfg.model.dropout == 0.1
    assert cfg.data == DataConfig() and cfg.log == LogConfig()


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_config(ToyConfig, write(tmp_path, "")) == ToyConfig()
    assert load_config(ToyConfig, write(tmp_path, "train:\n")) == ToyConfig()


def test_int_accepted_for_float_and_integral_float_for_int(tmp_path):
    cfg = load_config(ToyConfig, write(tmp_path, "train:\n  lr: 1\n  grad_clip: 2\n  total_images: 2e6\n"))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float) and isinstance(cfg.train.grad_clip, float)
    assert cfg.train.total_images == 2_000_000 and isinstance(cfg.train.total_images, int)


def test_unknown_key_names_file_dotted_key_and_suggestion(tmp_path):
    message = error_of(tmp_path, "train:\n  lrr: 0.1\n")
    assert message == f"{tmp_path / 'x.yaml'}: unknown key 'train.lrr'; did you mean 'train.lr'?"


def test_unknown_key_in_wrong_section_points_to_the_right_one(tmp_path):
    assert "did you mean 'train.batch_size'?" in error_of(tmp_path, "batch_size: 8\n")


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path):
    message = error_of(tmp_path, "log:\n  zzz: 1\n")
    assert "unknown key 'log.zzz'" in message and "log.every_images" in message


@pytest.mark.parametrize(
    "text, key, expected, shown",
    [
        ("train:\n  batch_size: 8.5\n", "train.batch_size", "an int", "8.5"),
        ("train:\n  batch_size: true\n", "train.batch_size", "an int", "True (bool)"),  # bool is not an int
        ("train:\n  lr: fast\n", "train.lr", "a float", "'fast' (str)"),
        ("data:\n  hflip: 1\n", "data.hflip", "a bool", "1 (int)"),
        ("data:\n  root: 5\n", "data.root", "a string", "5 (int)"),
        ("model:\n  channels: [8, x]\n", "model.channels[1]", "an int", "'x' (str)"),
        ("model:\n  channels: 8\n", "model.channels", "a list of int", "8 (int)"),
        ("model:\n  kernel: [3, 3, 3]\n", "model.kernel", "a list of 2 items", "[3, 3, 3]"),
        ("model:\n  norm: layer\n", "model.norm", "one of 'batch', 'group', 'none'", "'layer'"),
        ("model:\n  act: gelu\n", "model.act", "one of 'relu', 'silu'", "'gelu'"),
        ("model:\n  widths: {a: 1.5}\n", "model.widths.a", "an int", "1.5"),
        ("train:\n  precision: fp8\n", "train.precision", "one of 'auto', 'bf16', 'fp16', 'fp32'", "'fp8'"),
        ("train:\n  batch_size: 0\n", "train.batch_size", "int >= 1", "0 (int)"),
        ("train: 5\n", "train", "a mapping", "5 (int)"),
    ],
)
def test_wrong_type_names_file_key_expected_type_and_value(tmp_path, text, key, expected, shown):
    message = error_of(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'x.yaml'}: key '{key}' must be {expected}"), message
    assert shown in message


def test_optional_and_union_accept_null(tmp_path):
    cfg = load_config(ToyConfig, write(tmp_path, "model:\n  dropout: null\n  depth: null\n"))
    assert cfg.model.dropout is None and cfg.model.depth is None


def test_set_overrides_nested_list_and_string_values(tmp_path):
    path = write(tmp_path, "train:\n  lr: 0.1\n")
    cfg = load_config(ToyConfig, path, [
        "train.lr=1e-3", "model.channels=[4, 8]", "train.precision=fp32", "model.widths={a: 2}",
        "data.root=2024", "data.cache=", "train.device=cuda:1", "model.kernel=[5,5]",
    ])
    assert cfg.train.lr == pytest.approx(1e-3)
    assert cfg.model.channels == [4, 8] and cfg.model.kernel == (5, 5)
    assert cfg.train.precision == "fp32" and cfg.model.widths == {"a": 2}
    assert cfg.data.root == "2024" and cfg.data.cache == ""  # string fields keep the raw text
    assert cfg.train.device == "cuda:1"
    # Later overrides win.
    assert load_config(ToyConfig, path, ["train.lr=1", "train.lr=2"]).train.lr == 2.0


def test_set_errors_name_the_override(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"^--set train\.lrr: unknown key 'train\.lrr'; did you mean 'train\.lr'\?$"):
        load_config(ToyConfig, path, ["train.lrr=1"])
    with pytest.raises(ConfigError, match=r"^--set train\.batch_size: key 'train\.batch_size' must be an int, got 'x'"):
        load_config(ToyConfig, path, ["train.batch_size=x"])
    with pytest.raises(ConfigError, match=r"^--set model\.channels: key 'model\.channels\[0\]' must be an int"):
        load_config(ToyConfig, path, ["model.channels=[a]"])
    with pytest.raises(ConfigError, match=r"^--set train\.lr\.x: "):
        load_config(ToyConfig, path, ["train.lr.x=1"])


@pytest.mark.parametrize("bad", ["train.lr", "=1", "train..lr=1", "1train=2", "train.lr 1"])
def test_bad_set_syntax(tmp_path, bad):
    with pytest.raises(ConfigError, match=r"^--set .*(KEY=VALUE|dotted key)"):
        load_config(ToyConfig, write(tmp_path, ""), [bad])


def test_parse_overrides_keeps_raw_text():
    assert parse_overrides(["a.b=1e-4", "c=[1, 2]", "d=x=y"]) == [
        ("a.b", 1e-4, "1e-4"), ("c", [1, 2], "[1, 2]"), ("d", "x=y", "x=y")]


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(ToyConfig, tmp_path / "nope.yaml", [])
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_invalid_yaml_and_duplicate_keys_give_line_numbers(tmp_path):
    assert error_of(tmp_path, "train:\n  lr: [1,\n").startswith(f"{tmp_path / 'x.yaml'}:")
    assert "invalid YAML" in error_of(tmp_path, "train:\n  lr: [1,\n")
    message = error_of(tmp_path, "train:\n  lr: 1\n  lr: 2\n")
    assert message == f"{tmp_path / 'x.yaml'}:3: duplicate key 'lr' (first given on line 2)"
    assert "top level" in error_of(tmp_path, "- 1\n- 2\n")


def test_unsafe_yaml_tags_are_refused(tmp_path):
    assert "invalid YAML" in error_of(tmp_path, "train: !!python/object/apply:os.system ['true']\n")


def test_dump_load_round_trip(tmp_path):
    cfg = load_config(ToyConfig, write(tmp_path, ""), [
        "train.lr=3e-5", "model.channels=[1,2,3]", "model.kernel=[1,7]", "model.dropout=0.25",
        "model.widths={x: 3}", "data.cache=cache dir", "train.precision=fp16"])
    text = dump_config(cfg)
    assert yaml.safe_load(text)["train"]["lr"] == pytest.approx(3e-5)
    again = load_config(ToyConfig, write(tmp_path, text, "dumped.yaml"))
    assert again == cfg
    assert config_from_dict(ToyConfig, config_to_dict(cfg)) == cfg


def test_run_config_metadata_keys_are_ignored(tmp_path):
    # A run folder's config.yaml carries method and git commit; it can be fed back to --config.
    text = "method: vae\ngit_commit: abc123\n" + dump_config(ToyConfig())
    assert load_config(ToyConfig, write(tmp_path, text)) == ToyConfig()


def test_config_from_dict_is_strict():
    with pytest.raises(ConfigError, match=r"^checkpoint: unknown key 'train\.lrr'; did you mean 'train\.lr'\?"):
        config_from_dict(ToyConfig, {"train": {"lrr": 1}}, source="checkpoint")
    assert config_from_dict(ToyConfig, None) == ToyConfig()


@dataclass
class CheckedRange:
    low: int = 0
    high: int = 1

    def __post_init__(self):
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")


@dataclass
class RangeTop:
    range: CheckedRange = field(default_factory=CheckedRange)


def test_post_init_errors_become_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^--set range\.low: range: low \(5\) must be below high \(1\)$"):
        load_config(RangeTop, write(tmp_path, ""), ["range.low=5"])


@dataclass
class NeedsName:
    name: str


@dataclass
class NeedsTop:
    model: NeedsName = field(default_factory=lambda: NeedsName("x"))


def test_missing_required_field(tmp_path):
    with pytest.raises(ConfigError, match=r"missing required key 'model\.name'"):
        load_config(NeedsTop, write(tmp_path, "model: {}\n"))
    assert load_config(NeedsTop, write(tmp_path, "model: {name: y}\n")).model == NeedsName("y")
