"""What a run writes for people: metrics.jsonl and TensorBoard, tables, plots, report.md."""
