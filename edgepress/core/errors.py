"""The one error type a user ever sees: a problem and its fix, on one line."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unmet precondition; the CLI prints it as one line and exits 2."""

    def __init__(self, problem: str, *, fix: str) -> None:
        super().__init__(f"{problem}; fix: {fix}")
        self.problem = problem
        self.fix = fix

    def one_line(self) -> str:
        return " ".join(str(self).split())
