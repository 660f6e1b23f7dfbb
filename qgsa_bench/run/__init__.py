"""The run: a spec parsed once (spec.py), bound to a model (stages.Engine.run), executed as one stage
sequence (stages.py) with a selector at its insertion point (vision.py, post_vision.py, lm.py) and an
observer around the stages (observers.py)."""
