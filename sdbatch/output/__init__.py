"""The output protocol, torch-free: keys, job.json, create-once commits and the marker index, results, heartbeat, layouts."""
