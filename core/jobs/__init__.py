"""Processes: launching a run, supervising its worker, and the worker that drives the stages."""
