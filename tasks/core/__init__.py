"""The ground every stage stands on: paths and settings, the log contract, workload files, the
router prompt, the sentence encoder, MLflow conventions, files written whole, locks, the clock."""
