"""Registry: the MLflow model registry, challenger and champion, promotion."""
