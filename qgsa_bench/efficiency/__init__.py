"""Measuring: FLOP counting and timing."""
