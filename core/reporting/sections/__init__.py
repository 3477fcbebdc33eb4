"""The sections of report.json as frozen dataclasses, one module per section.

`base` holds what they share (the read-only mapping view, `Section`, `put_section`); the run
itself and report.json's one reader and writer are in core.reporting.runmodel.
"""
