"""Logging: one line per event, to the user's log file (rotated) and to stderr."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path
from typing import TextIO

FORMAT = "%(asctime)s.%(msecs)03d %(levelname)s %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


def setup_logging(log_file: Path | None, level: str = "info", stream: TextIO | None = None) -> logging.Logger:
    logger = logging.getLogger("ghostmesh")
    logger.setLevel(getattr(logging, level.upper()))
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(FORMAT, DATEFMT)
    console = logging.StreamHandler(stream or sys.stderr)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.RotatingFileHandler(log_file, maxBytes=2_000_000, backupCount=3, encoding="utf-8")
        to_file.setFormatter(formatter)
        logger.addHandler(to_file)
    return logger


def close_logging() -> None:
    logger = logging.getLogger("ghostmesh")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
