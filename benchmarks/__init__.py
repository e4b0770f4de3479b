"""Benchmarks: each module is one command (``python -m benchmarks.<name>``) writing JSON and Markdown
into ``benchmarks/results/``. They read photos from ``../shared/data`` and never from the repository."""
