"""Offline random-weight models (SD1.5- and SDXL-style) for the demo, tests and benchmarks."""
