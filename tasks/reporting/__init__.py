"""Reporting: the cycle's report (Markdown, HTML, JSON) and its charts."""
