"""Evaluation: did alignment transfer? Teachers and students on held-out prompts (`run.py`), one
table and one chart (`report.py`)."""
