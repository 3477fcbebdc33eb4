"""What a finished run says: report.json, the CLI table, report.html, figures, run diffs, MLflow."""
