"""Progress for long work, on stderr: a live line on a terminal, sparse lines in CI logs."""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
import warnings


@contextlib.contextmanager
def tool_output_to(log):
    """What third-party tools (exporters, optimizers, quantizers) print, warn or log goes to `log`
    (the stage log), not the terminal. For the duration the root logger's only handler writes
    there too: a library's logging.warning() then neither prints nor installs a lasting stderr
    handler, and one that called logging.basicConfig() at import has its handler set aside."""
    captured = io.StringIO()
    root = logging.getLogger()
    saved_handlers, root.handlers = root.handlers, [logging.StreamHandler(captured)]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter's own handler writes to stderr
    with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            root.handlers = saved_handlers
            log(captured.getvalue())


def say(message: str) -> None:
    print(f"[edgepress] {message}", file=sys.stderr, flush=True)


class Progress:
    def __init__(self, label: str, *, total: int) -> None:
        self.label = label
        self.total = max(total, 1)
        self.start = time.monotonic()
        self.last_print = 0.0
        self.live = sys.stderr.isatty()

    def update(self, done: int, *, note: str = "") -> None:
        now = time.monotonic()
        finished = done >= self.total
        if not finished and now - self.last_print < (0.2 if self.live else 10.0):
            return
        self.last_print = now
        text = f"[edgepress]   {self.label}: {done}/{self.total} ({100 * done / self.total:.0f}%) {now - self.start:.1f}s {note}"
        if self.live:
            end = "\n" if finished else ""
            print(f"\r{text}\x1b[K", end=end, file=sys.stderr, flush=True)
        elif finished or now - self.start > 10.0:
            print(text, file=sys.stderr, flush=True)
