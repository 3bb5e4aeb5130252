"""Enrichment of table rows: priority rules, multi-step sequences and threat-intel indicators."""
