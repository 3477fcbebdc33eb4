"""What a worker and its supervisor share through the run folder: exit codes, limits, live files, progress."""
