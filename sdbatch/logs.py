"""Loggers of other libraries held down: for secrets in their output, or for noise that says nothing true."""

from __future__ import annotations

import contextlib
import logging


def hold_at_least(level: int, *names: str) -> None:
    """Raise the named loggers to `level` for good (never lowers them): a root logger at DEBUG, common while
    debugging, would otherwise let their records through."""
    for name in names:
        logger = logging.getLogger(name)
        if logger.level < level:
            logger.setLevel(level)


@contextlib.contextmanager
def quieted(name: str, level: int = logging.ERROR):
    """The named logger at `level` inside the block, as it was afterwards."""
    logger = logging.getLogger(name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)
