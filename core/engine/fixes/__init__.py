"""Auto-fix: the fix ladder for a quantized variant below the bar, and the search over it.

- `ladder`: the rungs that apply to a variant, cheapest first, from its named causes;
- `equalize_rung`: cross-layer equalization of the Keras model (the `:eq` variants);
- `bias_correct`: empirical bias correction of the Keras model (the `:bc=` variants);
- `keep_float`: layers kept in float, the measured sensitivity scan and the greedy walk;
- `search`: the seeded select/judge split, the evaluation budget, the Pareto set and the choice;
- `selection`: a candidate measured (and briefly timed) on the selection images;
- `candidate`: one rung made and measured, or recorded with why not;
- `keep_float_search`: the keep-float rung in a run, here or as Ray tasks, within the budget;
- `walk`: the search for one variant, recorded in its `auto_fix`, the chosen fix added;
- `verdict`: the bar a candidate must meet, and the derived fix judged on the held-out images.

Which variant a fix makes is spelt once, in core.fixnames (the dashboard reads it too). The
stage that runs the search in a job is core.engine.stages.auto_fix.
"""
