"""One codec for the records: JSON-ready dicts and table rows, generated from a dataclass's fields.

A :class:`Codec` reads its record's fields (``dataclasses.fields`` and their annotations) and derives one
converter per field from its type::

    int, float, str, bool      checked on the way in: an integer is not a bool, a float is finite
    X | None                   None, or an X
    tuple[X, ...]              a JSON list of X
    an Enum                    its value
    a record with a Codec      a JSON object, read by that record's codec

A field of another type (a mapping, a value kept in another shape) names its converter in ``fields=``, which
can also rename its key, say what an absent key stands for, or rename or leave out its table column.
Keys that are not fields (``format``, a derived ``crashes``) are written by :class:`Computed` entries and
ignored on the way in.

Reading is strict: a value of the wrong type, or a missing key the record needs, is a
:class:`~fragileprobe.ConfigError` in the one format of :mod:`fragileprobe._validate` whose ``field`` is
the path to it (``trials[0].levels[2].level``). A key may be absent when its field has a default (documents
written before the field existed) or is optional (``None``).

Pure: no I/O. pandas is imported only when a DataFrame is asked for (:func:`dataframe`).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Generic, TypeVar

from fragileprobe._errors import ConfigError
from fragileprobe._validate import fail

__all__ = [
    "BOOL",
    "FLOAT",
    "INT",
    "JSON_OBJECT",
    "STR",
    "Codec",
    "Computed",
    "Conv",
    "Field",
    "dataframe",
    "enum_of",
    "nested",
    "optional",
    "tuple_of",
]

R = TypeVar("R")

# Characters of a bad value quoted in an error message: enough to recognise it, and a hostile document's
# 10 MB string does not become a 10 MB message (the old readers cut at 40).
MAX_SHOWN_CHARS: Final = 60


class _Shown:
    """A value as an error message quotes it: its repr, cut at :data:`MAX_SHOWN_CHARS`."""

    __slots__ = ("text",)

    def __init__(self, value: object) -> None:
        text = repr(value)
        self.text = text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."

    def __repr__(self) -> str:
        return self.text


class _Absent:
    """What a missing key holds, as an error message says it."""

    def __repr__(self) -> str:
        return "nothing"


_ABSENT: Final = _Absent()
_NO_VALUE: Final[Any] = object()  # "not given" (None is a value)


def _bad(path: str, what: str, value: object) -> ConfigError:
    return fail(path, what, _Shown(value))


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Conv:
    """How one value is written to JSON, read back (strictly), and shown in a table cell.

    Attributes:
        encode: Value -> its JSON form.
        decode: ``(JSON value, path)`` -> value; raises ConfigError naming ``path``.
        cell: Value -> what a DataFrame cell holds.
    """

    encode: Callable[[Any], Any]
    decode: Callable[[Any, str], Any]
    cell: Callable[[Any], Any] = _same


def _decode_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(path, "an integer", value)
    return value


def _decode_float(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(path, "a finite number", value)
    return float(value)


def _decode_str(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise _bad(path, "a string", value)
    return value


def _decode_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _bad(path, "true or false", value)
    return value


def _decode_object(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(path, "an object", value)
    return dict(value)


def _decode_list(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise _bad(path, "a list", value)
    return list(value)


INT: Final = Conv(_same, _decode_int)
FLOAT: Final = Conv(_same, _decode_float)
STR: Final = Conv(_same, _decode_str)
BOOL: Final = Conv(_same, _decode_bool)
# A JSON object kept as it is (a run's parameters): checked to be an object, its values left alone.
JSON_OBJECT: Final = Conv(dict, _decode_object)


def optional(inner: Conv) -> Conv:
    """``None``, or a value of ``inner``."""
    return Conv(
        encode=lambda v: None if v is None else inner.encode(v),
        decode=lambda v, path: None if v is None else inner.decode(v, path),
        cell=lambda v: None if v is None else inner.cell(v),
    )


def tuple_of(inner: Conv, *, join: str = ",") -> Conv:
    """A tuple of ``inner`` values, a JSON list; a table cell joins their cells with ``join``."""

    def decode(value: Any, path: str) -> tuple[Any, ...]:
        return tuple(inner.decode(x, f"{path}[{i}]") for i, x in enumerate(_decode_list(value, path)))

    return Conv(
        encode=lambda v: [inner.encode(x) for x in v],
        decode=decode,
        cell=lambda v: join.join(str(inner.cell(x)) for x in v),
    )


def enum_of(cls: type[enum.Enum]) -> Conv:
    """A member of ``cls``, written as its value."""
    allowed = "one of " + ", ".join(repr(m.value) for m in cls)

    def decode(value: Any, path: str) -> enum.Enum:
        try:
            return cls(value)
        except (ValueError, TypeError):  # TypeError: an unhashable value (a list) is no member either
            raise _bad(path, allowed, value) from None

    return Conv(encode=lambda v: v.value, decode=decode, cell=lambda v: v.value)


def nested(codec: Codec[Any]) -> Conv:
    """A record read and written by its own ``codec`` (a table cell holds its dict)."""
    return Conv(encode=codec.encode, decode=codec.decode_at, cell=codec.encode)


@dataclass(frozen=True, slots=True, kw_only=True)
class Field:
    """What one field does differently from what its type says.

    Attributes:
        conv: Its converter (default: derived from the annotation).
        key: Its JSON key (default: the field's name).
        missing: What an absent key stands for (default: the field's default; None for an optional field;
            else the key is required).
        omit_default: Leave the key out of the document when the value is the field's default.
        column: Its table column (default: the field's name); ``""`` leaves it out of tables.
        cell: What its table cell holds (default: the converter's cell).
    """

    conv: Conv | None = None
    key: str | None = None
    missing: Any = _NO_VALUE
    omit_default: bool = False
    column: str | None = None
    cell: Callable[[Any], Any] | None = None


@dataclass(frozen=True, slots=True)
class Computed:
    """A key written from the record but read by nothing (a format number, a derived count).

    Attributes:
        key: The JSON key.
        value: Record -> its JSON value.
        after: The key it follows in the document (None: it comes first).
    """

    key: str
    value: Callable[[Any], Any]
    after: str | None = None


@dataclass(frozen=True, slots=True)
class _Slot:
    """One field as the codec handles it."""

    name: str
    key: str
    conv: Conv
    missing: Any
    omit_default: bool
    default: Any
    column: str
    cell: Callable[[Any], Any]


# Record class -> its codec, so that a field typed as a record (or a tuple of them) finds its converter.
_CODECS: dict[type, Codec[Any]] = {}


def _is_optional(tp: Any) -> bool:
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    return union and type(None) in typing.get_args(tp)


def _conv_for(tp: Any, where: str) -> Conv:
    """The converter a field annotation ``tp`` calls for (TypeError when there is none: name one)."""
    scalars = {int: INT, float: FLOAT, str: STR, bool: BOOL}
    if tp in scalars:
        return scalars[tp]
    if _is_optional(tp):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return optional(_conv_for(inner, where))
    args = typing.get_args(tp)
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple_of(_conv_for(args[0], where))
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return enum_of(tp)
    if tp in _CODECS:
        return nested(_CODECS[tp])
    raise TypeError(f"{where}: no converter for {tp!r}; name one in the codec's fields=")


def _field_default(f: dataclasses.Field[Any]) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return _NO_VALUE


class Codec(Generic[R]):
    """Reads and writes one record class (see the module docstring).

    Args:
        cls: The frozen dataclass.
        label: What the record is called in error messages (``characterization``).
        fields: Per-field overrides, by field name.
        computed: Keys written but not read.
        resolve: Called with the decoded field values and the path before the record is built (to tie
            one field to another, e.g. a group's host names to the assets); returns the values to use.
        localns: Names an annotation uses that exist only for type checkers in the record's module.
    """

    __slots__ = ("_after", "_computed", "_localns", "_overrides", "_plan", "_resolve", "cls", "label")

    def __init__(
        self,
        cls: type[R],
        *,
        label: str,
        fields: Mapping[str, Field] | None = None,
        computed: Sequence[Computed] = (),
        resolve: Callable[[dict[str, Any], str], dict[str, Any]] | None = None,
        localns: Mapping[str, Any] | None = None,
    ) -> None:
        self.cls = cls
        self.label = label
        self._overrides = dict(fields or {})
        unknown = set(self._overrides) - {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        if unknown:
            raise TypeError(f"{cls.__name__} has no field(s) {sorted(unknown)}")
        self._computed = tuple(computed)
        self._after: dict[str | None, list[Computed]] = {}
        for c in self._computed:
            self._after.setdefault(c.after, []).append(c)
        self._resolve = resolve
        self._localns = dict(localns or {})
        self._plan: tuple[_Slot, ...] | None = None
        _CODECS[cls] = self

    @property
    def slots(self) -> tuple[_Slot, ...]:
        """The fields as handled, in field order (worked out on first use: annotations are strings until
        then, and importing a record module stays cheap)."""
        if self._plan is None:
            hints = typing.get_type_hints(self.cls, localns=self._localns)
            self._plan = tuple(self._slot(f, hints[f.name]) for f in dataclasses.fields(self.cls))  # type: ignore[arg-type]
        return self._plan

    def _slot(self, f: dataclasses.Field[Any], tp: Any) -> _Slot:
        o = self._overrides.get(f.name, Field())
        conv = o.conv or _conv_for(tp, f"{self.cls.__name__}.{f.name}")
        default = _field_default(f)
        missing = o.missing
        if missing is _NO_VALUE:
            missing = None if default is _NO_VALUE and _is_optional(tp) else default
        return _Slot(
            name=f.name,
            key=o.key or f.name,
            conv=conv,
            missing=missing,
            omit_default=o.omit_default,
            default=default,
            column=f.name if o.column is None else o.column,
            cell=o.cell or conv.cell,
        )

    def encode(self, record: R) -> dict[str, Any]:
        """The record as a JSON-ready dict (lists, not tuples; enums as their values)."""
        out = {c.key: c.value(record) for c in self._after.get(None, ())}
        for s in self.slots:
            value = getattr(record, s.name)
            if not (s.omit_default and value == s.default):
                out[s.key] = s.conv.encode(value)
            out.update((c.key, c.value(record)) for c in self._after.get(s.key, ()))
        return out

    def decode(self, data: Any) -> R:
        """Read a record from a document (strictly).

        Raises:
            ConfigError: ``<label> data is malformed: <path>: must be <what>, got <value>``, ``field`` the
                path.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"{self.label} data is malformed: expected an object, got {_Shown(data)!r}")
        try:
            return self.decode_at(data, "")
        except ConfigError as exc:
            raise ConfigError(f"{self.label} data is malformed: {exc}", field=exc.field) from exc

    def decode_at(self, data: Any, path: str) -> R:
        """Read a record found at ``path`` of a document (errors name their path, with no prefix)."""
        if not isinstance(data, Mapping):
            raise _bad(path or self.label, "an object", data)
        values: dict[str, Any] = {}
        for s in self.slots:
            where = f"{path}.{s.key}" if path else s.key
            if s.key in data:
                values[s.name] = s.conv.decode(data[s.key], where)
            elif s.missing is not _NO_VALUE:
                values[s.name] = s.missing
            else:
                raise fail(where, "present", _ABSENT)
        if self._resolve is not None:
            values = self._resolve(values, path)
        return self.cls(**values)

    def columns(self) -> tuple[str, ...]:
        """The table columns, in field order (the fields with a column)."""
        return tuple(s.column for s in self.slots if s.column)

    def row(self, record: R) -> dict[str, Any]:
        """The record as one table row: column -> cell."""
        return {s.column: s.cell(getattr(record, s.name)) for s in self.slots if s.column}


def dataframe(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Any:
    """A pandas DataFrame of ``rows`` with ``columns`` in that order (needs ``fragileprobe[report]``)."""
    import pandas as pd  # lazily: pandas is an optional extra and slow to import

    return pd.DataFrame(list(rows), columns=list(columns))
