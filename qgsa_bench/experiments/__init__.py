"""The commands built on the one run (run/): each drives runs of the stage sequence over data or cases and
writes one results folder through the results driver (driver.py). Rendering tables and figures lives with
`qgsa_bench.report`."""
