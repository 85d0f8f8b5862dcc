"""Progress bars and the running training meter (the meter imports torch lazily)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr (a log line every 10 % when stderr is not a terminal)."""

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None):
        self.total, self.label, self.enabled = total, label, enabled
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.perf_counter()
        self._last_decile = -1

    def update(self, done: int, **stats: float) -> None:
        if not self.enabled:
            return
        frac = done / self.total if self.total else 1.0
        rate = done / max(time.perf_counter() - self.start, 1e-9)
        rate_s = f"{rate:,.0f}" if rate >= 10 else f"{rate:.2f}"  # slow loops (conv on a CPU) need the digits
        extra = "  ".join(f"{k} {v:.4f}" for k, v in stats.items())
        if self.tty:
            bar = "#" * int(30 * frac)
            self.stream.write(f"\r{self.label} [{bar:<30}] {done}/{self.total} {extra}  {rate_s} it/s")
            self.stream.flush()
        elif int(frac * 10) > self._last_decile:
            self._last_decile = int(frac * 10)
            self.stream.write(f"{self.label} {done}/{self.total} ({100 * frac:.0f} %) {extra}  {rate_s} it/s\n")

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")


class TrainMeter:
    """Running loss and accuracy of a training loop, for the progress bar and the history.

    The sums stay on the device; one sync every ``every`` steps (and at the end) keeps a
    loop as fast as a bare one.
    """

    def __init__(self, total: int, label: str, progress: bool, device: str, history: list[dict],
                 every: int = 200):
        import torch

        self.total, self.every, self.history = total, every, history
        self.bar = Progress(total, label, progress)
        self.loss = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = self.seen = 0

    def step(self, it: int, loss, out, labels) -> None:
        self.loss += loss.detach()
        self.correct += (out.detach().argmax(1) == labels).sum()
        self.steps += 1
        self.seen += labels.shape[0]
        if (it + 1) % self.every == 0 or it + 1 == self.total:
            lv, acc = self.loss.item() / self.steps, self.correct.item() / self.seen
            self.history.append({"iteration": it + 1, "loss": lv, "train_accuracy": acc})
            self.bar.update(it + 1, loss=lv, acc=acc)
            self.loss.zero_()
            self.correct.zero_()
            self.steps = self.seen = 0

    def state(self) -> list:
        """The partial window (for a checkpoint): loss sum, correct count, steps, examples."""
        return [self.loss.detach().cpu().clone(), self.correct.detach().cpu().clone(), self.steps, self.seen]

    def load_state(self, st: list) -> None:
        self.loss.copy_(st[0])
        self.correct.copy_(st[1])
        self.steps, self.seen = int(st[2]), int(st[3])

    def close(self) -> None:
        self.bar.close()
