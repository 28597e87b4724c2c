"""Release gates: budgets, policies across runs, regression against a baseline, verdicts, JUnit and summaries."""
