"""report.json, report.md and the plots: written by writer.py, read back by view.py."""
