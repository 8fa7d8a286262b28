"""Training: the candidate catalog, base models, fine-tuning, the scope guard."""
