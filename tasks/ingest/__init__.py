"""Ingest: landing files and the HTTP intake into staged batches, PII redaction, validation into the
store."""
