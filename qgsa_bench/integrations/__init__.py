"""qgsa-bench inside other tools' harnesses: lmms-eval (lmms.py, lmms_model.py). Nothing here is imported by the
rest of the library; each module imports its tool only when used."""
