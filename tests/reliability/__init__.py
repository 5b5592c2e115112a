"""Fault injection with real processes: kills, signals, full disks, vanishing inputs, load."""
