"""The output protocol, torch-free: keys, job.json, commits and the marker index, results, heartbeat, layouts."""
