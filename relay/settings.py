"""Declaring settings and reading them. ``setting()`` declares one on a field of a ``settings_class`` (its parser, its
default, what it means), ``group()`` nests another settings class under a key prefix, ``settings_of()`` lists what a
class declares, and ``read_settings()`` resolves them from a configuration file and ``RELAY_*`` variables. Knows no
particular setting: the relay's are declared in ``relay.config``."""

from __future__ import annotations

import dataclasses
import difflib
import os
import stat
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar, dataclass_transform

import yaml

from relay.config_kinds import Invalid, Kind, SecretValue, require_string
from relay.errors import ConfigError
from relay.secret import MIN_MASKED_SECRET, Secret

__all__ = [
    "ENV_PREFIX",
    "REQUIRED",
    "Derived",
    "Setting",
    "assemble",
    "did_you_mean",
    "group",
    "read_settings",
    "setting",
    "settings_class",
    "settings_of",
]

T = TypeVar("T")

ENV_PREFIX: Final = "RELAY_"
_SETTING: Final = "relay.setting"  # field metadata: the _Declared setting the field holds
_GROUP: Final = "relay.group"  # field metadata: the key prefix of the settings class the field holds


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()


@dataclass(frozen=True, slots=True)
class Derived:
    """A default computed from other settings, once all of them are valid."""

    description: str
    derive: Callable[[Mapping[str, Any]], object]


# --- Declaring ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Declared:
    kind: Kind
    default: object
    doc: str


def setting(kind: Kind, default: object, doc: str, /) -> Any:
    """Declares the field it is assigned to as a setting: ``kind`` parses it, ``default`` (``REQUIRED``, ``None`` for
    unset, a value or a ``Derived``) applies when it is not given, ``doc`` says what it means.

    The file key is the field's name (after its group's prefix); the variable is the key uppercased, with ``RELAY_``.
    The default is positional on purpose: type checkers take a ``default=`` keyword for a dataclass default, and the
    field must stay required in the constructor (``load_config()`` fills every one).
    """
    return dataclasses.field(metadata={_SETTING: _Declared(kind, default, doc)})


def group(key_prefix: str) -> Any:
    """Declares the field it is assigned to as holding a settings class whose keys start with ``key_prefix``."""
    return dataclasses.field(metadata={_GROUP: key_prefix})


@dataclass_transform(frozen_default=True, field_specifiers=(setting, group))
def settings_class(cls: type[T]) -> type[T]:
    """A frozen dataclass whose every field is a ``setting()`` or a ``group()``."""
    return dataclass(frozen=True, slots=True)(cls)


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting as declared: its file key, the field it fills (dotted in a group), parser, default and meaning."""

    key: str
    field: str
    kind: Kind
    default: object
    doc: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.key.upper()

    @property
    def keys(self) -> tuple[str, ...]:
        """The file keys that set this setting: a secret also has ``<key>_file``."""
        return (self.key, f"{self.key}_file") if isinstance(self.kind, SecretValue) else (self.key,)

    @property
    def env_names(self) -> tuple[str, ...]:
        return tuple(ENV_PREFIX + key.upper() for key in self.keys)


def settings_of(cls: type[object], key_prefix: str = "", field_prefix: str = "") -> tuple[Setting, ...]:
    """Every setting ``cls`` declares, in field order, those of a group where the group's field is."""
    found: list[Setting] = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]  # any settings_class
        if isinstance(declared := field.metadata.get(_SETTING), _Declared):
            key, name = key_prefix + field.name, field_prefix + field.name
            found.append(Setting(key, name, declared.kind, declared.default, declared.doc))
        elif isinstance(prefix := field.metadata.get(_GROUP), str):
            nested = _group_class(cls, field.name)
            found += settings_of(nested, key_prefix + prefix, f"{field_prefix}{field.name}.")
        else:
            raise TypeError(f"{cls.__name__}.{field.name} is neither a setting() nor a group()")
    return tuple(found)


def assemble(cls: type[T], values: Mapping[str, Any], field_prefix: str = "") -> T:
    """An instance of the settings class ``cls`` from ``values``, keyed by ``Setting.field``."""
    arguments = {
        field.name: (
            assemble(_group_class(cls, field.name), values, f"{field_prefix}{field.name}.")
            if _GROUP in field.metadata
            else values[field_prefix + field.name]
        )
        for field in dataclasses.fields(cls)  # type: ignore[arg-type]  # any settings_class
    }
    return cls(**arguments)


def _group_class(cls: type[object], name: str) -> type[object]:
    nested = typing.get_type_hints(cls)[name]
    assert isinstance(nested, type), f"{cls.__name__}.{name}: a group() holds a settings class"
    return nested


# --- Reading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Raw:
    """A value as given, and where, named the way the operator wrote it: ``RELAY_PAGE_SIZE`` or ``page_size (in
    relay.toml)``."""

    value: object
    origin: str


_Layer = Mapping[str, _Raw]  # file key -> the value given for it


def read_settings(
    settings: Sequence[Setting],
    path: Path | None,
    environ: Mapping[str, str],
    warnings: list[str] | None = None,
    *,
    optional: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """The value of every setting, keyed by ``Setting.field``, from ``environ``, else the file at ``path``, else the
    default (derived defaults computed last, in order, so that one may use one derived before it).

    Raises ``ConfigError`` with every problem found, one line each, naming the setting. ``warnings``, if given,
    receives a line for each value that is accepted but unwise (a secret too short to mask, a secret file every user
    may read), naming the setting, never a secret. ``optional`` maps the fields of required settings that this caller
    does not need to the value they get when they are not given.
    """
    optional = {} if optional is None else optional
    warnings = [] if warnings is None else warnings
    file_layer: _Layer = {}
    problems: list[str] = []
    if path is not None:
        file_layer, problems = _read_file_layer(settings, path)
    layers = (_env_layer(settings, environ), file_layer)
    values: dict[str, object] = {}
    for each in settings:
        try:
            default = optional.get(each.field, each.default) if each.default is REQUIRED else each.default
            values[each.field] = _resolve(each, _given(each, layers), warnings, default)
        except Invalid as problem:
            problems.append(str(problem))
    if problems:
        raise ConfigError(problems)
    for each in settings:
        if isinstance(default := values[each.field], Derived):
            values[each.field] = default.derive(values)
    return values


def _env_layer(settings: Sequence[Setting], environ: Mapping[str, str]) -> _Layer:
    # An empty variable counts as unset: deployment templates render "not set" as "set to nothing".
    return {
        key: _Raw(environ[name], name)
        for each in settings
        for key, name in zip(each.keys, each.env_names, strict=True)
        if environ.get(name, "").strip()
    }


def _read_file_layer(settings: Sequence[Setting], path: Path) -> tuple[_Layer, list[str]]:
    try:
        document = _read_document(path)
    except Invalid as problem:
        return {}, [f"configuration file {path}: {problem}"]
    layer: dict[str, _Raw] = {}
    problems: list[str] = []
    known = tuple(key for each in settings for key in each.keys)
    for key, value in document.items():
        origin = f"{key} (in {path})"
        if not isinstance(key, str) or key not in known:
            problems.append(f"{origin}: unknown key{did_you_mean(str(key).lower().removeprefix('relay_'), known)}")
        elif value is not None:  # YAML's `key:` with nothing after it leaves the default, like an empty variable
            layer[key] = _Raw(value, origin)
    return layer, problems


_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    ".toml": tomllib.loads,
    ".yaml": yaml.safe_load,
    ".yml": yaml.safe_load,
}


def _read_document(path: Path) -> Mapping[object, object]:
    parse = _PARSERS.get(path.suffix.lower())
    if parse is None:
        raise Invalid("must be TOML (.toml) or YAML (.yaml, .yml)")
    try:
        document = parse(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise Invalid(f"cannot read it: {error.strerror}") from None
    except UnicodeDecodeError:
        raise Invalid("is not UTF-8 text") from None
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise Invalid(f"cannot parse it: {_parse_error_text(error)}") from None
    if document is None:  # an empty YAML file
        return {}
    if not isinstance(document, dict):
        raise Invalid(f"must hold a mapping of keys to values, not {type(document).__name__}")
    return document


def _parse_error_text(error: Exception) -> str:
    # YAML's own message quotes the offending line, which may hold a secret: keep only the problem and the place.
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    if isinstance(error, yaml.YAMLError):
        return "invalid YAML"
    return str(error)  # tomllib's messages name the place, never the text


def did_you_mean(name: str, known: Sequence[str], cutoff: float = 0.6) -> str:
    matches = difflib.get_close_matches(name, known, n=1, cutoff=cutoff)
    return f" (did you mean {matches[0]}?)" if matches else ""


def _given(setting: Setting, layers: Sequence[_Layer]) -> dict[str, _Raw]:
    """What the first layer that sets ``setting`` gives for it, under any of its keys."""
    for layer in layers:
        if given := {key: layer[key] for key in setting.keys if key in layer}:
            return given
    return {}


def _resolve(setting: Setting, given: Mapping[str, _Raw], warnings: list[str], default: object) -> object:
    if not given:
        if default is REQUIRED:
            raise Invalid(f"{' or '.join(setting.env_names)}: required")
        return default
    if len(given) > 1:
        raise Invalid(f"{' and '.join(raw.origin for raw in given.values())}: set only one of them")
    [(key, raw)] = given.items()
    try:
        value = raw.value if key == setting.key else _read_secret_file(raw.value, raw.origin, warnings)
        parsed = setting.kind.parse(value)
    except Invalid as problem:
        raise Invalid(f"{raw.origin}: {problem}") from None
    if isinstance(parsed, Secret) and len(parsed.reveal()) < MIN_MASKED_SECRET:
        # Warned about, not refused: local setups use short secrets. The log filter cannot mask it (relay.logs).
        warnings.append(
            f"{raw.origin}: a secret of fewer than {MIN_MASKED_SECRET} characters is neither safe nor masked in the "
            "logs; use a long random one"
        )
    return parsed


def _read_secret_file(raw: object, origin: str, warnings: list[str]) -> str:
    path = require_string(raw)
    try:
        with Path(path).open(encoding="utf-8") as file:
            mode = os.fstat(file.fileno()).st_mode  # of the file read, wherever a symlink pointed
            content = file.read().strip()
    except OSError as error:
        raise Invalid(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError:
        raise Invalid(f"{path} is not UTF-8 text") from None  # the error's own message quotes a byte of it
    if not content:
        raise Invalid(f"{path} is empty")
    if mode & stat.S_IROTH:
        # Warned about, not refused: a Kubernetes Secret volume's files are 0644 unless its defaultMode says otherwise.
        warnings.append(
            f"{origin}: {path} is readable by every user (mode {stat.S_IMODE(mode):04o}); make it readable by the "
            "relay only (chmod 0400, or defaultMode: 0400 on a Kubernetes Secret volume)"
        )
    return content
