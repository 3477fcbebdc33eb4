"""A variant's deployability pre-flight (its entry's `deployability`): integer-only, TFLite-Micro
and Vela cells, each with how its check ended."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.reporting.sections.base import MappingView


class CellStatus(enum.StrEnum):
    """How one deployability check of one variant ended."""

    OK = "ok"  # measured: the numbers are in the cell
    FAILS = "fails"  # the target cannot run the variant; `reason` says why
    NOT_APPLICABLE = "not applicable"  # the check means nothing for this variant; `reason` says why
    MISSING_EXTRA = "missing extra"  # the optional package is not installed; `reason` says how
    ERROR = "error"  # the tool itself failed; `reason` holds its last line


@dataclass(frozen=True)
class IntegerOnlyCell(MappingView):
    """Whether every op computes in integers (core.engine.flatbuffer.integer_only)."""

    integer_only: bool
    float_io: bool
    blockers: tuple[str, ...] = ()  # "CONV_2D conv2d_1 (FLOAT32)", one per op computing in float

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> IntegerOnlyCell:
        return cls(
            integer_only=bool(d["integer_only"]),
            float_io=bool(d.get("float_io")),
            blockers=tuple(str(b) for b in d.get("blockers") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "integer_only": self.integer_only,
            "float_io": self.float_io,
            "blockers": list(self.blockers),
        }


@dataclass(frozen=True)
class MicroCell(MappingView):
    """TFLite-Micro: does its interpreter load and plan the model, and how big is the arena.

    `arena_bytes` is the arena TFLite-Micro allocated for the model (its recording allocator's
    total): the smallest `arena_size` a device build of the same model needs.
    `missing_op` is the first op TFLite-Micro has no kernel for (it stops at the first one).
    """

    status: CellStatus
    arena_bytes: int | None = None
    missing_op: str | None = None
    reason: str | None = None
    version: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MicroCell:
        arena = d.get("arena_bytes")
        return cls(
            status=CellStatus(str(d["status"])),
            arena_bytes=None if arena is None else int(arena),
            missing_op=d.get("missing_op"),
            reason=d.get("reason"),
            version=d.get("version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "arena_bytes": self.arena_bytes,
            "missing_op": self.missing_op,
            "reason": self.reason,
            "version": self.version,
        }


@dataclass(frozen=True)
class VelaCell(MappingView):
    """Arm Ethos-U: how Vela maps the model (ops on the NPU vs the CPU, memory, cycles).

    Counts are Vela's own operators (it splits some TFLite ops, e.g. SOFTMAX, into several).
    `sram_bytes` / `flash_bytes` and `cycles` are Vela's estimates for `system_config`.
    """

    status: CellStatus
    accelerator: str | None = None
    system_config: str | None = None
    npu_ops: int | None = None
    cpu_ops: int | None = None
    cpu_op_types: tuple[str, ...] = ()  # Vela's names of the ops left to the CPU, sorted
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    cycles: int | None = None
    inferences_per_second: float | None = None
    reason: str | None = None
    version: str | None = None

    @property
    def falls_back_to_cpu(self) -> bool:
        """True when Vela left any op to the CPU."""
        return self.status == CellStatus.OK and bool(self.cpu_ops)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VelaCell:
        def whole(key: str) -> int | None:
            value = d.get(key)
            return None if value is None else int(value)

        ips = d.get("inferences_per_second")
        return cls(
            status=CellStatus(str(d["status"])),
            accelerator=d.get("accelerator"),
            system_config=d.get("system_config"),
            npu_ops=whole("npu_ops"),
            cpu_ops=whole("cpu_ops"),
            cpu_op_types=tuple(str(x) for x in d.get("cpu_op_types") or ()),
            sram_bytes=whole("sram_bytes"),
            flash_bytes=whole("flash_bytes"),
            cycles=whole("cycles"),
            inferences_per_second=None if ips is None else float(ips),
            reason=d.get("reason"),
            version=d.get("version"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "accelerator": self.accelerator,
            "system_config": self.system_config,
            "npu_ops": self.npu_ops,
            "cpu_ops": self.cpu_ops,
            "cpu_op_types": list(self.cpu_op_types),
            "sram_bytes": self.sram_bytes,
            "flash_bytes": self.flash_bytes,
            "cycles": self.cycles,
            "inferences_per_second": self.inferences_per_second,
            "reason": self.reason,
            "version": self.version,
        }


@dataclass(frozen=True)
class Deployability(MappingView):
    """A variant's deployability pre-flight (a variant entry's `deployability`): read from its
    `.tflite` without running it on a device. `identical_to` names the parent whose outputs
    this derived variant's equal bit for bit (the same model for the user), else None."""

    integer_only: IntegerOnlyCell
    micro: MicroCell
    vela: VelaCell
    identical_to: str | None = None

    @classmethod
    def from_json(cls, value: Any) -> Deployability:
        if isinstance(value, Deployability):
            return value
        return cls(
            integer_only=IntegerOnlyCell.from_dict(value["integer_only"]),
            micro=MicroCell.from_dict(value["micro"]),
            vela=VelaCell.from_dict(value["vela"]),
            identical_to=value.get("identical_to"),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "integer_only": self.integer_only.to_dict(),
            "micro": self.micro.to_dict(),
            "vela": self.vela.to_dict(),
            "identical_to": self.identical_to,
        }
