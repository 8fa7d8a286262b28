"""Evaluation: lm-eval and the encoder routers on the frozen test split, latency, cost, the gate."""
