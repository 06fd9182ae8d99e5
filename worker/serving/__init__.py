"""Serving speech on the device: the XTTS engine, jobs, the scheduler and the batch loop."""
