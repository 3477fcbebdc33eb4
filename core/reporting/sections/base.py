"""What every typed part of report.json shares: a read-only mapping view over its report.json
form, the generic `Section` (read and written over its dataclass fields), and the helpers that
keep unknown keys and absent defaults as the file held them.

Keys a model does not know (at the top, in a variant or inside a section) are kept in `extra`
and written back unchanged, so a reader never drops what a newer writer stored. Each object is
also a read-only mapping over its report.json form (`variant["n"]`), so code that reads report
fields by key sees exactly what the file holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import Any, ClassVar, Self, TypeVar

from core.errors import QuantLensError


class MappingView(Mapping[str, Any]):
    """Read-only `obj[key]` / `obj.get(key)` over the object's report.json form."""

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @cached_property
    def _as_dict(self) -> dict[str, Any]:
        # Frozen, so the serialised form never goes stale.
        return self.to_dict()

    def __getitem__(self, key: str) -> Any:
        return self._as_dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict)

    def __len__(self) -> int:
        return len(self._as_dict)


def as_read(obj: Any, d: dict[str, Any]) -> dict[str, Any]:
    """`d` without the keys the file it was read from lacked and that still hold their default.

    A report rewritten (a rename, an MLflow note) then keeps exactly the keys it had; an object
    built in code (`present` None) writes every key.
    """
    present: frozenset[str] | None = obj.present
    if present is None:
        return d
    defaults = {f.name: f for f in dataclasses.fields(obj)}

    def default(key: str) -> Any:
        f = defaults.get(key)
        if f is None or key in ("present", "extra"):
            return dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            return jsonable(f.default)
        if f.default_factory is not dataclasses.MISSING:
            return jsonable(f.default_factory())
        return dataclasses.MISSING

    return {k: v for k, v in d.items() if k in present or v != default(k)}


def unknown_keys(entry: Mapping[str, Any], known: tuple[str, ...]) -> dict[str, Any]:
    """The entries of `entry` whose keys are not in `known`, in their order."""
    return {k: v for k, v in entry.items() if k not in known}


def jsonable(value: Any) -> Any:
    """Tuples back to lists and mappings back to dicts, as json.dumps and json.loads expect."""
    if isinstance(value, tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: jsonable(v) for k, v in value.items()}
    return value


def frozen(value: Any) -> Any:
    """JSON lists as tuples (at any depth), so a section read from a file stays frozen."""
    if isinstance(value, list):
        return tuple(frozen(v) for v in value)
    return value


class Section(MappingView):
    """A section of report.json with a shape of its own, as a frozen dataclass.

    A subclass is a frozen dataclass that sets `KEY` (where it lives: a top-level key of
    report.json, or for a nested part its name) and declares its fields in report.json order,
    then `extra` (keys this version does not know, written back as read) and `present` (the
    keys of the entry it was read from, see `as_read`). Reading and writing are generic over
    the fields: a field that holds other sections names their class in `NESTED`, and a field
    in `OMIT_WHEN_NONE` is left out of the file while it is None (as the section was written
    before it was typed). A new field is then one line here, plus its writer.

    A writer builds the section and stores it with `put_section` (a worker through
    `ReportFile.put`): no stage assembles these dicts by hand.
    """

    KEY: ClassVar[str] = ""
    NESTED: ClassVar[Mapping[str, type[Section]]] = {}
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        names = (f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]
        return tuple(n for n in names if n not in ("extra", "present"))

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> Self:
        """Read the section from its report.json object; unknown keys go to `extra`.

        Raises:
            QuantLensError: a field holds what it cannot (a nested entry that is no object).
        """
        names = cls.field_names()
        values = {k: frozen(entry[k]) for k in names if k in entry}
        try:
            for key, kind in cls.NESTED.items():
                if key in values:
                    values[key] = read_nested(kind, values[key])
            values |= {"extra": unknown_keys(entry, names), "present": frozenset(entry)}
            return cls(**values)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise QuantLensError(
                f"report.json's `{cls.KEY}` is not readable ({exc!s}); re-run the job"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        d = {
            k: jsonable(v)
            for k in self.field_names()
            if not ((v := getattr(self, k)) is None and k in self.OMIT_WHEN_NONE)
        }
        extra: Mapping[str, Any] = getattr(self, "extra")  # noqa: B009 (declared by subclasses)
        return {**as_read(self, d), **jsonable(extra)}


def read_nested(kind: type[Section], value: Any) -> Any:
    """A nested field's value read into `kind`: entries by name (an object), or in order."""

    def one(entry: Any) -> Section:
        return entry if isinstance(entry, kind) else kind.from_dict(entry)

    if isinstance(value, Mapping):
        return {k: one(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(one(v) for v in value)
    return value


S = TypeVar("S", bound=Section)


def put_section(report: dict[str, Any], section: Section) -> None:
    """Store a section in a report.json object (as `update_report`'s change, or the worker's
    copy through `ReportFile.put`): the one way a section enters report.json."""
    report[section.KEY] = section.to_dict()


def section_of(report: Mapping[str, Any], kind: type[S]) -> S | None:
    """The section `kind` of a report.json object (a writer's copy), or None when absent."""
    value = report.get(kind.KEY)
    if isinstance(value, kind):
        return value
    return kind.from_dict(value) if isinstance(value, Mapping) else None
