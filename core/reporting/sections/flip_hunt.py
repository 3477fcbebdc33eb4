"""A variant under small perturbations (`--perturb`, the flip hunt): its entry's `flip_hunt`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.reporting.sections.base import MappingView


@dataclass(frozen=True)
class PerturbedAgreement(MappingView):
    """A variant's agreement with the original under one perturbation (`--perturb`).

    Counted only on the images whose original answer did not change under the perturbation
    (`counted` = `n` - `original_changed`): the perturbations are not label-preserving for a
    weak model, and a flip of the original is not the variant's. `new_flips`: counted images
    the variant agreed on unperturbed and disagrees on now (`<variant>.flip-hunt.csv` lists
    them); flips also go the other way, so agreement can rise.
    """

    perturbation: str
    n: int
    original_changed: int
    counted: int
    agreeing: int
    agreement_pct: float | None
    ci95: tuple[float, float] | None
    new_flips: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PerturbedAgreement:
        ci = d.get("ci95")
        pct = d.get("agreement_pct")
        return cls(
            perturbation=str(d["perturbation"]),
            n=int(d["n"]),
            original_changed=int(d["original_changed"]),
            counted=int(d["counted"]),
            agreeing=int(d["agreeing"]),
            agreement_pct=None if pct is None else float(pct),
            ci95=None if ci is None else (float(ci[0]), float(ci[1])),
            new_flips=int(d["new_flips"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "perturbation": self.perturbation,
            "n": self.n,
            "original_changed": self.original_changed,
            "counted": self.counted,
            "agreeing": self.agreeing,
            "agreement_pct": self.agreement_pct,
            "ci95": None if self.ci95 is None else list(self.ci95),
            "new_flips": self.new_flips,
        }
