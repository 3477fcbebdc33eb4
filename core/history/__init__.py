"""The run history: the SQLite index over the run folders."""
