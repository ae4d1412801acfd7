"""Progress of long work: a tqdm bar on a terminal, plain lines in a log.

On a terminal the bar redraws in place. Written to a file or a pipe, a bar becomes runs of carriage
returns (dozens of kilobytes for one run), so there the bar is off and one plain line (done, total,
rate, ETA) goes to `say` at each tenth of the work and at least every `ADPA_LOG_EVERY` seconds (30). `TQDM_DISABLE=1` turns the bar off anywhere, as tqdm documents.
`quiet_libraries` makes the libraries' own bars (transformers' "Writing model shards", its GGUF
conversion, huggingface_hub's downloads) follow the same rule; `ADPA_QUIET=1` (`adpa --quiet`)
silences the plain lines too, leaving the summaries.
"""

from __future__ import annotations

import os
import sys
import time



def bar_enabled(active: bool = True) -> bool:
    """A bar only for the process that reports (`active`), on a terminal, without TQDM_DISABLE."""
    off = os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false")
    return active and not off and sys.stderr.isatty()


def quiet_libraries() -> None:
    """Off the terminal, the libraries' tqdm bars too: set in the environment before they are imported
    (tqdm reads TQDM_* when it is imported, so this module imports it only in `Progress`). `adpa` calls it
    first."""
    if os.environ.get("ADPA_QUIET") == "1" or not sys.stderr.isatty():
        os.environ.setdefault("TQDM_DISABLE", "1")  # every tqdm bar, the libraries' included


def log_every_s() -> float:
    """Seconds between two plain progress lines at most (`ADPA_LOG_EVERY`, default 30): a long run's log
    says how it goes at least that often, as the HF Trainer's logging steps do."""
    try:
        return max(1.0, float(os.environ.get("ADPA_LOG_EVERY", "30")))
    except ValueError:
        return 30.0


class Progress:
    """`update(n)` and `postfix(text)` as a tqdm bar has them; without a bar, `say` gets
    "DESC: DONE/TOTAL UNIT (PCT%) POSTFIX, ETA" each time another tenth is done, when `log_every_s` have
    passed since the last line, and at the end."""

    def __init__(self, total: int, desc: str, unit: str, say, initial: int = 0, active: bool = True):
        quiet = os.environ.get("ADPA_QUIET") == "1"
        self.total, self.desc, self.unit, self.say = total, desc, unit, say if active and not quiet else None
        self.done, self.text, self.first = initial, "", initial
        self.tenth = self._tenth()
        self.start = self.last = time.monotonic()
        self.every = log_every_s()
        from tqdm import tqdm  # here, not above: see quiet_libraries
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True) \
            if bar_enabled(active) else None

    def _tenth(self) -> int:
        return 10 * self.done // self.total if self.total else 10

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.say is not None:
            now = time.monotonic()
            if self._tenth() > self.tenth or self.done == self.total or now - self.last >= self.every:
                self.tenth, self.last = self._tenth(), now
                self.say(self._line(now))

    def _line(self, now: float) -> str:
        pct = 100 * self.done / self.total if self.total else 100
        line = f"{self.desc}: {self.done:,}/{self.total:,} {self.unit}s ({pct:.0f}%) {self.text}".rstrip()
        rate = (self.done - self.first) / (now - self.start) if now > self.start else 0.0
        if 0 < self.done < self.total and rate > 0:
            line += f", ETA {_clock((self.total - self.done) / rate)}"
        return line

    def postfix(self, text: str) -> None:
        self.text = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
