"""Where the run ran (local or a Ray cluster): report.json's `engine`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from core.reporting.sections.base import Section


@dataclass(frozen=True)
class EngineInfo(Section):
    """Where the run ran: `local`, or `ray` with its cluster (address, alive nodes, CPUs),
    the node that converted and timed (`latency_node`), and on Ray the evaluation's batches
    per node and the nodes lost during it (their unfinished batches ran on the others)."""

    KEY: ClassVar[str] = "engine"
    OMIT_WHEN_NONE: ClassVar[frozenset[str]] = frozenset({"cpus", "batches_by_node", "nodes_lost"})

    name: str = "local"
    address: str | None = None
    nodes: tuple[str, ...] = ()
    cpus: int | None = None
    latency_node: str | None = None
    batches_by_node: Mapping[str, int] | None = None
    nodes_lost: tuple[str, ...] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    present: frozenset[str] | None = field(default=None, compare=False, repr=False)
