"""Where the finished run was logged (MLflow): report.json's `tracking`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.reporting.sections.base import Section


@dataclass(frozen=True)
class Tracking(Section):
    """Where the finished run was logged (MLflow): the tracking URI and the ids there, or the
    one-line error that kept it from being logged."""

    KEY: ClassVar[str] = "tracking"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"experiment_id", "run_id"})

    uri: str | None = None
    experiment_id: str | None = None
    run_id: str | None = None
    error: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)
