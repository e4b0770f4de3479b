"""Readers of weight-file formats: plain arrays and configs out, no network code."""
