"""Where the embedded demo's model and data live in the workspace (built by core.engine.demo).

Only paths: the dashboard, the CLI and the launcher ask whether the demo is ready without
importing the engine that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.inputs.rundir import workspace_home


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's model and data live."""

    root: Path
    saved_model: Path
    keras_model: Path
    data_csv: Path
    labels: Path

    def ready(self) -> bool:
        return (
            (self.saved_model / "saved_model.pb").is_file()
            and self.keras_model.is_file()
            and self.data_csv.is_file()
        )


def demo_root(home: Path | None = None) -> Path:
    return (home or workspace_home()) / "demo"


def demo_paths(home: Path | None = None, *, root: Path | None = None) -> DemoPaths:
    """The demo's paths (nothing is built or imported here)."""
    base = root or demo_root(home)
    return DemoPaths(
        root=base,
        saved_model=base / "model" / "saved_model",
        keras_model=base / "model" / "digits.keras",
        data_csv=base / "data" / "digits.csv",
        labels=base / "data" / "labels.txt",
    )
