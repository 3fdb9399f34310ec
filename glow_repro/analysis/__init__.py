"""Analysis of a study's results: aggregates over seeds, published numbers, figures, report.

Nothing here imports torch (DESIGN "How data flows"): a report rebuilds on a laptop from the
files under ``results/<study>/``.
"""
