"""A variant's root causes (its entry's `diagnosis.causes`, core.engine.causes names them)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.reporting.sections.base import MappingView, jsonable


@dataclass(frozen=True)
class RootCause(MappingView):
    """One named cause of a quantized variant's error (core.engine.causes): where (`layer`, and
    `layers`, the chain the cause and its fixes involve, in graph order), what (`cause`: one of
    outlier_channel, weight_outliers, clipping, range_collapse, preprocessing, runtime_only,
    diffuse, biased_error), one sentence (`words`), the numbers behind it (`evidence`, e.g.
    `channel_max_abs`, `range_ratio`, `used_levels`) and the fixes that apply, cheapest first
    (equalize, bias_correction, int16_activations, weight_only, keep_float)."""

    layer: str
    layers: tuple[str, ...]
    cause: str
    words: str
    fixes: tuple[str, ...] = ()
    evidence: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RootCause:
        return cls(
            layer=str(d["layer"]),
            layers=tuple(str(x) for x in d.get("layers") or ()),
            cause=str(d["cause"]),
            words=str(d.get("words") or ""),
            fixes=tuple(str(x) for x in d.get("fixes") or ()),
            evidence=dict(d.get("evidence") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "layers": list(self.layers),
            "cause": self.cause,
            "evidence": jsonable(self.evidence),
            "fixes": list(self.fixes),
            "words": self.words,
        }


@dataclass(frozen=True)
class VariantCauses(MappingView):
    """A variant's `diagnosis.causes` and what they were measured on (`causes_measured_on`:
    calibration and evaluated image counts, the thresholds the rules applied)."""

    causes: tuple[RootCause, ...] = ()
    calibration_images: int = 0
    evaluated_images: int = 0
    thresholds: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VariantCauses:
        """Read the `causes` keys of a variant's `diagnosis` (core.engine.causes.VariantCauses
        writes the same keys)."""
        measured = d.get("causes_measured_on") or {}
        return cls(
            causes=tuple(RootCause.from_dict(c) for c in d.get("causes") or ()),
            calibration_images=int(measured.get("calibration_images") or 0),
            evaluated_images=int(measured.get("evaluated_images") or 0),
            thresholds=dict(measured.get("thresholds") or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "causes": [c.to_dict() for c in self.causes],
            "causes_measured_on": {
                "calibration_images": self.calibration_images,
                "evaluated_images": self.evaluated_images,
                "thresholds": jsonable(self.thresholds),
            },
        }

    def lines(self) -> list[str]:
        """One line per cause, as the CLI summary and report.html list them: its words, which
        name the layer first (core.engine.causes), else the layer and then the words."""
        return [
            c.words if _names_first(c.words, c.layer) else f"{c.layer}: {c.words}"
            for c in self.causes
        ]


def _names_first(words: str, layer: str) -> bool:
    """Whether `words` start with `layer` as a name ("conv1: …", "conv2 → pool2 …"), not only
    with its letters ("conv10: …" for conv1)."""
    return words.startswith(layer) and words[len(layer) : len(layer) + 1] in (":", " ", ",")
