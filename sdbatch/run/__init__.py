"""The driver side of one run: prepare and execute it, estimate it before renting GPUs, the gallery after."""
