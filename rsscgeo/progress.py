"""Progress of long work: tqdm bars for people, JSON lines for programs.

``rsscgeo --progress json COMMAND ...`` (or :func:`set_style` from Python) makes every
bar of the long-running commands print one JSON object per line on stderr instead of
drawing itself, e.g. ``{"progress": 0.42, "done": 42, "total": 100, "stage":
"classifying", "unit": "patch"}``, at most every ``JSON_INTERVAL`` seconds and always
at the end of a stage. That is what the QGIS plugin reads into its progress bar; no
program has to scrape tqdm's terminal output. ``none`` shows no progress at all.
"""

from __future__ import annotations

import json
import sys
import time
from types import TracebackType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # imported when a bar is made: the CLI imports this module at start-up
    from tqdm.auto import tqdm

Style = Literal["bar", "json", "none"]
STYLES: tuple[Style, ...] = ("bar", "json", "none")
# Seconds between two JSON lines of one stage (its last line is always printed).
JSON_INTERVAL = 0.5
# JSON progress lines start with this, so a reader can tell them from other stderr lines.
JSON_PREFIX = '{"progress"'

_style: Style = "bar"


def set_style(style: Style) -> None:
    """How progress is shown from now on in this process: ``bar``, ``json`` or ``none``."""
    global _style
    if style not in STYLES:
        raise ValueError(f"progress style {style!r} is not one of {', '.join(STYLES)}")
    _style = style


def style() -> Style:
    """The current progress style."""
    return _style


class JsonProgress:
    """A tqdm-like counter that prints its state as JSON lines on stderr."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = 0
        self._printed = 0.0

    def update(self, n: int = 1) -> None:
        """Count ``n`` more done; print a line if the last one is old enough."""
        self.n += n
        now = time.monotonic()
        if now - self._printed >= JSON_INTERVAL:
            self._print()
            self._printed = now

    def close(self) -> None:
        """Print the final state."""
        self._print()

    def _print(self) -> None:
        share = self.n / self.total if self.total else 1.0
        line = {
            "progress": round(min(1.0, share), 4),
            "done": self.n,
            "total": self.total,
            "stage": self.desc,
            "unit": self.unit,
        }
        print(json.dumps(line), file=sys.stderr, flush=True)

    def __enter__(self) -> JsonProgress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()


def progress_bar(
    total: int, desc: str, unit: str, *, disable: bool = False, leave: bool = True
) -> tqdm[object] | JsonProgress:
    """A progress counter for ``total`` units of work, in the current style.

    Use it as a context manager and call ``update(n)``; ``disable`` (or the style
    ``none``) shows nothing.
    """
    if _style == "json" and not disable:
        return JsonProgress(total, desc, unit)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=disable or _style == "none")
