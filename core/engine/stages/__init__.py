"""The job as stages, run in this order by core.engine.pipeline.run_job:

    start      resolve the model and data, load the model, open report.json
    decode     every evaluation image once, into the decoded cache (.decoded.u8)
    reference  the original on each decoded batch, streamed with decode: samples.csv,
               skipped.csv, reference.probs.npy, the calibration set (.calibration.npy)
    convert    each variant's .tflite on a background thread (convert_in_background)
    evaluate   each converted model on the decoded images: <variant>.samples.csv and
               <variant>.probs.npy (evaluate_converted; another engine can replace it)
    ray        (--engine ray, instead of decode, reference, convert and evaluate) the head
               converts, a Ray cluster decodes and evaluates, the same files are written
    diagnose   per-layer error of each quantized variant (<variant>.layers.csv), then
               --auto-fix: a measured search whose result joins as a derived variant
    time       batch-1 latency of the original and every finished variant, machine quiet
    deploy     per variant: integer-only, TFLite-Micro's arena, Vela's Ethos-U mapping
    perturb    (--perturb) the flip hunt: agreement under small perturbations
    finish     the run's status and recommendation; scratch files removed

Each stage takes the run's typed context (core.engine.stages.context.RunContext) and what the
stages before it returned, and writes its outputs into the run folder, so a restarted worker
finds them there.
"""
