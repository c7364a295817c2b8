"""The `scylla` command and its workflows: sweep and launch, evaluate, select, the test-time-scaling bench, the demo.

Layers: pipeline -> {train, fit, paper_figs} -> scylla (tests/test_layers.py checks that nothing imports upward)."""
