"""Progress bars and the running training meter (the meter imports torch lazily).

On a terminal the bar is tqdm's (elapsed, ETA, rate, refreshed a few times a second). When
stderr is not a terminal (a log file, CI) a bar would fill the file with carriage returns, so
a plain line is written at every tenth of the work instead, with the same figures.
"""

from __future__ import annotations

import sys
import time


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60:02d}:{s % 60:02d}"


def _rate(rate: float, unit: str) -> str:
    return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.2f} {unit}/s"  # slow loops need the digits


class Progress:
    """Progress of ``total`` units of work on stderr; ``update(done, **stats)`` says how far."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, unit: str = "it"):
        self.total, self.label, self.enabled, self.unit = total, label, enabled, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1
        self._bar = None
        self._stats: dict[str, float] = {}
        if enabled and self.tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=label, file=self.stream, unit=unit, dynamic_ncols=True,
                             mininterval=0.25, leave=True)

    def update(self, done: int, **stats: float) -> None:
        if not self.enabled:
            return
        self._stats = stats or self._stats
        if self._bar is not None:
            if stats:
                self._bar.set_postfix({k: f"{v:.4f}" for k, v in stats.items()}, refresh=False)
            self._bar.update(done - self._bar.n)
            return
        frac = done / self.total if self.total else 1.0
        if int(frac * 10) <= self._last_decile:
            return
        self._last_decile = int(frac * 10)
        elapsed = time.perf_counter() - self.start
        rate = done / max(elapsed, 1e-9)
        eta = (self.total - done) / rate if done else float("nan")
        extra = "".join(f"  {k} {v:.4f}" for k, v in self._stats.items())
        when = f"{_clock(elapsed)} elapsed" + (f", {_clock(eta)} left" if done < self.total and done else "")
        self.stream.write(f"{self.label} {done}/{self.total} ({100 * frac:.0f} %){extra}  {_rate(rate, self.unit)}"
                          f"  {when}\n")
        self.stream.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def stats_every(total: int) -> int:
    """Steps between two readings of the running loss and accuracy: about 20 readings in a short
    run, one per 200 steps in a long one (each reading waits for the device)."""
    return max(1, min(200, total // 20))


class TrainMeter:
    """Running loss and accuracy of a training loop, for the progress bar and the history.

    The bar advances every step; the sums stay on the device and are read (one sync) every
    :func:`stats_every` steps and at the end, which keeps a loop as fast as a bare one.
    """

    def __init__(self, total: int, label: str, progress: bool, device: str, history: list[dict],
                 every: int | None = None, window: list | None = None):
        import torch

        self.total, self.history = total, history
        self.every = every or stats_every(total)
        self.bar = Progress(total, label, progress)
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = self.seen = 0
        if window is not None:  # a resumed loop's partial window (see :meth:`state`)
            self.load_state(window)

    def step(self, it: int, loss, out, labels) -> None:
        self.record(it, loss.detach(), (out.detach().argmax(1) == labels).sum(), labels.shape[0])

    def record(self, it: int, loss, correct, examples: int) -> None:
        """Add step ``it``: its mean loss and correct count (device tensors) over ``examples``."""
        self.loss += loss
        self.correct += correct
        self.steps += 1
        self.seen += examples
        if (it + 1) % self.every == 0 or it + 1 == self.total:
            lv, acc = self.loss.item() / self.steps, self.correct.item() / self.seen
            self.history.append({"iteration": it + 1, "loss": lv, "train_accuracy": acc})
            self.bar.update(it + 1, loss=lv, acc=acc)
            self.loss.zero_()
            self.correct.zero_()
            self.steps = self.seen = 0
        else:
            self.bar.update(it + 1)

    def state(self) -> list:
        """The partial window (for a checkpoint): loss sum, correct count, steps, examples."""
        return [self.loss.detach().cpu().clone(), self.correct.detach().cpu().clone(), self.steps, self.seen]

    def load_state(self, st: list) -> None:
        self.loss.copy_(st[0])
        self.correct.copy_(st[1])
        self.steps, self.seen = int(st[2]), int(st[3])

    def skip_to(self, done: int) -> None:
        """Show a resumed loop's starting point on the bar."""
        if done:
            self.bar.update(done)

    def close(self) -> None:
        self.bar.close()
