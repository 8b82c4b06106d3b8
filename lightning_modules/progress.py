"""Time-left estimates for progress lines (training, evaluation, corruption generation, benchmark).

Example:
    >>> from lightning_modules.progress import duration, time_left
    >>> duration(42), duration(190), duration(7200)
    ('42 s', '3.2 min', '2.0 h')
    >>> time_left(elapsed=60.0, done=1, total=4)
    'about 3.0 min left'
"""

from __future__ import annotations


def duration(seconds: float) -> str:
    """Seconds under 90, minutes under 1.5 hours, hours beyond."""
    s = max(float(seconds), 0.0)
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def time_left(elapsed: float, done: float, total: float) -> str:
    """``about X left`` at the rate so far (``done`` of ``total`` units in ``elapsed`` seconds)."""
    if done <= 0:
        return "time left unknown"
    return f"about {duration(elapsed / done * max(total - done, 0))} left"


__all__ = ["duration", "time_left"]
