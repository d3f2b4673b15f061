"""Reporting, as a pipeline: ingest the evidence (evidence.py) -> collect runs into frames (collect.py) ->
analyse into numbers (analysis.py, no prose) -> figures (figures.py) -> markdown sections (sections.py).
Entry point: write.write_report (`ablate report`); findings.py and summary.py write the README's block."""
