"""Typed, strict configuration: YAML files -> nested dataclasses, with ``--set a.b=value`` overrides.

Every method describes its configuration as a top-level dataclass (``data``, ``model``, ``train``, ``log`` and
its own sections) built from the shared sections below. ``load_config(cls, path, overrides)`` reads the YAML
file with a safe loader and checks every key and value against the dataclass annotations, so a typo or a wrong
type fails at start with a one-line ``ConfigError`` that names where the bad value came from:

    configs/vae/x.yaml: unknown key 'train.lrr'; did you mean 'train.lr'?
    configs/vae/x.yaml: key 'train.batch_size' must be an int, got '64x' (str)
    --set train.precision: key 'train.precision' must be one of 'auto', 'bf16', 'fp16', 'fp32', got 'fp8' (str)

Supported annotations: ``bool``, ``int`` (bools refused; integral floats like ``2e6`` accepted), ``float``
(ints accepted), ``str``, ``pathlib.Path``, ``list[T]``, ``tuple[T, ...]`` / ``tuple[A, B]``, ``dict[str, T]``,
``Optional[T]`` / ``T | None``, ``Literal`` choices, ``Any`` and nested dataclasses. A field may also carry ``metadata={"choices": (...)}`` (the value must
be one of them) and ``metadata={"min": x}`` (inclusive lower bound for numbers).

YAML notes: floats written like ``1e-4`` (which plain YAML 1.1 reads as a string) are read as floats; duplicate
keys in one mapping are an error instead of silently keeping the last one. A ``--set`` value is parsed as YAML
(``--set train.lr=1e-4``, ``--set model.channels=[32,64]``); for a string field the raw text is kept
(``--set data.root=2024`` gives ``"2024"``), an empty value is the empty string and ``null`` is None.

The run folder's ``config.yaml`` adds the top-level keys ``method``, ``git_commit`` and ``workdir``; they are
ignored when loading (``RUN_METADATA_KEYS``), so a run's config file can be passed back to ``--config`` as it is.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "ConfigError",
    "DataConfig",
    "TrainConfig",
    "LogConfig",
    "PRECISIONS",
    "RUN_METADATA_KEYS",
    "load_config",
    "parse_overrides",
    "config_from_dict",
    "config_to_dict",
    "dump_config",
]

# auto: bf16 where the device computes it natively, else fp32 (common.distributed.resolve_precision)
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# Keys the run folder's config.yaml carries besides the config itself; skipped when loading a config.
RUN_METADATA_KEYS = ("method", "git_commit", "workdir")


class ConfigError(ValueError):
    """A config file or override is wrong; the message is one line naming the source, the key and what was expected."""


# ---------------------------------------------------------------------------------------------------------------
# Shared sections (fields and defaults are part of docs/contracts.md: do not rename).


@dataclasses.dataclass
class DataConfig:
    root: str = "data/synthetic"
    resolution: int = dataclasses.field(default=32, metadata={"min": 1})
    cache: str = ""  # empty: common.cache.default_cache_dir(root, resolution)
    hflip: bool = True


@dataclasses.dataclass
class TrainConfig:
    seed: int = dataclasses.field(default=0, metadata={"min": 0})
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps (checked when the run starts)
    precision: str = dataclasses.field(default="auto", metadata={"choices": PRECISIONS})
    channels_last: bool = False
    compile: bool = False
    batch_size: int = dataclasses.field(default=64, metadata={"min": 1})
    lr: float = dataclasses.field(default=2e-4, metadata={"min": 0.0})
    total_images: int = dataclasses.field(default=100000, metadata={"min": 0})  # THE training length
    checkpoint_every_images: int = dataclasses.field(default=20000, metadata={"min": 0})
    grad_clip: float = dataclasses.field(default=0.0, metadata={"min": 0.0})  # 0 = off
    ema_decay: float = dataclasses.field(default=0.0, metadata={"min": 0.0})  # 0 = off
    num_workers: int = dataclasses.field(default=0, metadata={"min": 0})


@dataclasses.dataclass
class LogConfig:
    every_images: int = dataclasses.field(default=2000, metadata={"min": 1})  # scalars
    image_every_images: int = dataclasses.field(default=20000, metadata={"min": 0})  # grids
    tensorboard: bool = True


# ---------------------------------------------------------------------------------------------------------------
# YAML loading: safe, with 1e-4 read as a float and duplicate keys refused.

_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _StrictSafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that reads ``1e-4`` as a float and refuses duplicate keys."""


# Replace the float resolver (YAML 1.1 demands a dot in '1.0e-4', which surprises everyone).
_StrictSafeLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:float"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_StrictSafeLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def _construct_mapping_no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    loader.flatten_mapping(node)
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, typing.Hashable) and key in seen:
            mark = key_node.start_mark
            raise ConfigError(
                f"{mark.name}:{mark.line + 1}: duplicate key '{key}' (first given on line {seen[key] + 1})"
            )
        if isinstance(key, typing.Hashable):
            seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=True)


_StrictSafeLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping_no_duplicates)


def _yaml_load(text: str, name: str) -> Any:
    """Parse YAML text safely; syntax errors become a one-line ConfigError with the line number."""
    try:
        loader = _StrictSafeLoader(text)
        loader.name = name
        try:
            return loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{name}:{mark.line + 1}" if mark is not None else name
        problem = exc.problem or exc.context or "invalid YAML"
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {str(exc).splitlines()[0]}") from None


# ---------------------------------------------------------------------------------------------------------------
# Type checking against dataclass annotations.


def _type_hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:  # a forward reference that cannot be resolved is a bug in the config class
        raise TypeError(f"cannot resolve the type annotations of {cls.__qualname__}: {exc}") from exc


def _describe(tp: Any) -> str:
    """Human-readable name of an annotation, with an article: 'an int', 'a list of float', 'one of ...'."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return "anything"
    if tp is bool:
        return "a bool (true/false)"
    if tp is int:
        return "an int"
    if tp is float:
        return "a float"
    if tp is str:
        return "a string"
    if tp is Path:
        return "a path (string)"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__} section)"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, typing.List):  # noqa: UP006
        inner = _describe(args[0]).split(" ", 1)[-1] if args else "anything"
        return f"a list of {inner}"
    if origin in (tuple, typing.Tuple):  # noqa: UP006
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_describe(args[0]).split(' ', 1)[-1]}"
        return f"a list of {len(args)} items ({', '.join(_describe(a).split(' ', 1)[-1] for a in args)})"
    if origin in (dict, typing.Dict):  # noqa: UP006
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def _value_repr(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


class _Converter:
    """Checks a parsed YAML tree against a dataclass; knows which source (file or --set) each key came from."""

    def __init__(self, default_source: str, sources: dict[str, str], raw_text: dict[str, str]):
        self.default_source = default_source
        self.sources = sources  # dotted key -> "--set a.b" for keys set on the command line
        self.raw_text = raw_text  # dotted key -> the raw --set text (kept for string fields)

    def source(self, dotted: str) -> str:
        # The most specific source: the key itself, else the closest parent set by --set, else the file.
        parts = dotted.replace("[", ".[").split(".") if dotted else []
        for end in range(len(parts), 0, -1):
            key = ".".join(parts[:end]).replace(".[", "[")
            if key in self.sources:
                return self.sources[key]
        for key, src in self.sources.items():  # a --set of a child created this node (--set train.lr.x=1)
            if dotted and key.startswith(dotted + "."):
                return src
        return self.default_source

    def fail(self, dotted: str, expected: str, value: Any) -> typing.NoReturn:
        raise ConfigError(f"{self.source(dotted)}: key '{dotted}' must be {expected}, got {_value_repr(value)}")

    def convert(self, value: Any, tp: Any, dotted: str, meta: typing.Mapping[str, Any] | None = None) -> Any:
        out = self._convert(value, tp, dotted)
        meta = meta or {}
        if "choices" in meta and out not in meta["choices"]:
            self.fail(dotted, "one of " + ", ".join(repr(c) for c in meta["choices"]), out)
        if "min" in meta and out is not None and isinstance(out, (int, float)) and out < meta["min"]:
            self.fail(dotted, f"{_describe(tp).split(' ', 1)[-1]} >= {meta['min']}", out)
        return out

    def _convert(self, value: Any, tp: Any, dotted: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if tp is Any or tp is object:
            return value
        if dataclasses.is_dataclass(tp):
            return self.build(tp, value, dotted)
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            for arm in args:
                if arm is type(None):
                    continue
                try:
                    return self._convert(value, arm, dotted)
                except ConfigError:
                    continue
            self.fail(dotted, _describe(tp), value)
        if origin is typing.Literal:
            for choice in args:
                # 1 == True in Python: compare types too so that `true` is not accepted for 1.
                if value == choice and type(value) is type(choice):
                    return value
            if dotted in self.raw_text and self.raw_text[dotted] in args:
                return self.raw_text[dotted]
            self.fail(dotted, _describe(tp), value)
        if tp is bool:
            if isinstance(value, bool):
                return value
            self.fail(dotted, _describe(tp), value)
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)  # total_images: 2e6 is an int written the short way
            self.fail(dotted, _describe(tp), value)
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            self.fail(dotted, _describe(tp), value)
        if tp is str or tp is Path:
            if isinstance(value, str):
                return tp(value)
            if dotted in self.raw_text and not isinstance(value, (list, dict)):
                return tp(self.raw_text[dotted])  # --set data.root=2024 means the string "2024"
            self.fail(dotted, _describe(tp), value)
        if origin in (list, typing.List):  # noqa: UP006
            if not isinstance(value, (list, tuple)):
                self.fail(dotted, _describe(tp), value)
            inner = args[0] if args else Any
            return [self._convert(item, inner, f"{dotted}[{i}]") for i, item in enumerate(value)]
        if origin in (tuple, typing.Tuple):  # noqa: UP006
            if not isinstance(value, (list, tuple)):
                self.fail(dotted, _describe(tp), value)
            if not args or (len(args) == 2 and args[1] is Ellipsis):
                inner = args[0] if args else Any
                return tuple(self._convert(item, inner, f"{dotted}[{i}]") for i, item in enumerate(value))
            if len(value) != len(args):
                self.fail(dotted, _describe(tp), value)
            return tuple(self._convert(item, a, f"{dotted}[{i}]") for i, (item, a) in enumerate(zip(value, args, strict=True)))
        if origin in (dict, typing.Dict):  # noqa: UP006
            if not isinstance(value, dict):
                self.fail(dotted, _describe(tp), value)
            key_tp, val_tp = args if args else (Any, Any)
            out = {}
            for k, v in value.items():
                key_path = f"{dotted}.{k}" if dotted else str(k)
                out[self._convert(k, key_tp, key_path)] = self._convert(v, val_tp, key_path)
            return out
        if isinstance(tp, type):
            if isinstance(value, tp):
                return value
            self.fail(dotted, _describe(tp), value)
        raise TypeError(f"unsupported config annotation {tp!r} for key '{dotted}'")

    def build(self, cls: type, value: Any, dotted: str) -> Any:
        """Build dataclass ``cls`` from a mapping (None = all defaults), refusing unknown and missing keys."""
        if value is None:
            value = {}
        if not isinstance(value, dict):
            if not dotted:
                raise ConfigError(f"{self.default_source}: expected a mapping of sections at the top level, "
                                  f"got {_value_repr(value)}")
            self.fail(dotted, _describe(cls), value)
        hints = _type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        kwargs = {}
        for key, item in value.items():
            key_path = f"{dotted}.{key}" if dotted else str(key)
            if not dotted and key in RUN_METADATA_KEYS and key not in fields:
                continue  # run folder metadata (config.yaml of a run): not part of the config
            if key not in fields:
                raise ConfigError(f"{self.source(key_path)}: unknown key '{key_path}'; "
                                  f"{_suggest(str(key), list(fields), dotted, cls, hints)}")
            kwargs[key] = self.convert(item, hints[key], key_path, fields[key].metadata)
        missing = [
            name for name, f in fields.items()
            if name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            where = f"{dotted}.{missing[0]}" if dotted else missing[0]
            raise ConfigError(f"{self.source(dotted)}: missing required key '{where}'")
        try:
            return cls(**kwargs)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:  # a __post_init__ check of the config class
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = dotted or cls.__name__
            if not message.startswith(where):  # the check may already name its key
                message = f"{where}: {message}"
            raise ConfigError(f"{self.source(dotted)}: {message}") from None


def _suggest(key: str, valid: list[str], prefix: str, cls: type | None = None, hints: dict | None = None) -> str:
    def full(name: str) -> str:
        return f"{prefix}.{name}" if prefix else name

    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if close:
        return f"did you mean '{full(close[0])}'?"
    # A key put in the wrong section ('lr' at the top level): point at the section that has it.
    nested = []
    for name in valid:
        tp = (hints or {}).get(name)
        if dataclasses.is_dataclass(tp):
            nested += [f"{name}.{f.name}" for f in dataclasses.fields(tp)]
    by_leaf = {n.rsplit(".", 1)[-1]: n for n in reversed(nested)}
    close = difflib.get_close_matches(key, list(by_leaf), n=1, cutoff=0.8)
    if close:
        return f"did you mean '{full(by_leaf[close[0]])}'?"
    if not valid:
        return "this section takes no keys"
    return "valid keys: " + ", ".join(full(v) for v in valid)


# ---------------------------------------------------------------------------------------------------------------
# Public API.

_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def parse_overrides(overrides: typing.Iterable[str] | None) -> list[tuple[str, Any, str]]:
    """``["a.b=1e-4", ...]`` -> ``[("a.b", 0.0001, "1e-4"), ...]`` (dotted key, YAML-parsed value, raw text)."""
    parsed = []
    for item in overrides or []:
        if not isinstance(item, str) or "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. --set train.lr=1e-4")
        key, text = item.split("=", 1)
        key = key.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(f"--set {item!r}: '{key}' is not a dotted key like train.lr")
        value = "" if text.strip() == "" else _yaml_load(text, f"--set {key}")
        parsed.append((key, value, text))
    return parsed


def _apply_override(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            # e.g. --set train.lr.x=1: 'train.lr' is a value, not a section.
            parent = ".".join(parts[: depth + 1])
            raise ConfigError(f"--set {key}: '{parent}' is a value ({_value_repr(child)}), not a section")
        node = child
    node[parts[-1]] = value


def _build(cls: type, tree: Any, source: str, overrides: typing.Iterable[str] | None) -> Any:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    sources: dict[str, str] = {}
    raw_text: dict[str, str] = {}
    parsed = parse_overrides(overrides)
    if parsed:
        if tree is None:
            tree = {}
        if not isinstance(tree, dict):
            raise ConfigError(f"{source}: expected a mapping of sections at the top level, got {_value_repr(tree)}")
        tree = _deep_copy_tree(tree)
        for key, value, text in parsed:
            _apply_override(tree, key, value)
            sources[key] = f"--set {key}"
            # Forget a raw text stored under this key by an earlier --set of a child/parent key.
            raw_text = {k: v for k, v in raw_text.items() if not (k == key or k.startswith(key + "."))}
            raw_text[key] = text.strip()
    return _Converter(source, sources, raw_text).build(cls, tree, "")


def _deep_copy_tree(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: _deep_copy_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy_tree(v) for v in tree]
    return tree


def load_config(cls: type, path: str | Path, overrides: typing.Iterable[str] | None = None) -> Any:
    """Read YAML ``path`` into dataclass ``cls``, then apply ``--set KEY=VALUE`` overrides; strict (ConfigError)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, expected a YAML config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) YAML file") from None
    tree = _yaml_load(text, str(path))
    return _build(cls, tree, str(path), overrides)


def config_from_dict(cls: type, d: dict | None, source: str = "config", overrides: typing.Iterable[str] | None = None):
    """Rebuild a config from a plain dict (e.g. a checkpoint's ``"config"``), with the same checks as load_config."""
    return _build(cls, d, source, overrides)


def config_to_dict(cfg: Any) -> Any:
    """Dataclass config -> plain dict/list/scalars (tuples as lists, paths as strings): YAML- and checkpoint-safe."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, dict):
        return {str(k): config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, (list, tuple)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


def dump_config(cfg: Any) -> str:
    """YAML text of a config (dataclass or dict), keys in declaration order; load_config reads it back."""
    data = config_to_dict(cfg)
    return yaml.dump(data, Dumper=_ConfigDumper, sort_keys=False, default_flow_style=False, width=120)


class _ConfigDumper(yaml.SafeDumper):
    """Block-style mappings, but short lists of scalars on one line (``channels: [32, 64]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(isinstance(v, (int, float, str, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_ConfigDumper.add_representer(list, _represent_list)
