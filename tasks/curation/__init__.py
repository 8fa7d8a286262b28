"""Curation: the judge, expert review, the vector index, versioned ground truth."""
