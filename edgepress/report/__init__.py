"""report.json, report.md and the plots: model.py holds report.json's typed shape and reads it back (view.py adds
what readers need beside it), writer.py writes, plots.py draws."""
