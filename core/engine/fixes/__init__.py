"""Auto-fix: the fix ladder for a quantized variant below the bar, and the search over it.

- `ladder`: the rungs that apply to a variant, cheapest first, from its named causes;
- `equalize_rung`: cross-layer equalization of the Keras model (the `:eq` variants);
- `bias_correct`: empirical bias correction of the Keras model (the `:bc=` variants);
- `keep_float`: layers kept in float, the measured sensitivity scan and the greedy walk;
- `search`: the seeded select/report split, the evaluation budget, every candidate tried, the
  Pareto set and the choice;
- `records`: the typed records report.json holds for the search (through
  core.reporting.runmodel).

The stage that runs it in a job is core.engine.stages.auto_fix.
"""
