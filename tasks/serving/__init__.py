"""Serving: the router as an MLflow pyfunc model, and the reference agent."""
