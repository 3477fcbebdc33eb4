"""Pure numbers: agreement and its intervals, deltas, KL, latency percentiles."""
