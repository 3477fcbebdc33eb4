"""Where a run's inputs come from: paths, archives, data sets, images, presets, the run folder."""
