"""`python3 -m qgsa_bench.cli ...`: the same as the `qgsa` console script."""

from qgsa_bench.cli import main

main()
