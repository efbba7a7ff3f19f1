"""bench/scheduler.py's parts: workload, simulated GPU caches, the simulation, the driver on Ray, the report."""
