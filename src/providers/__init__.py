"""Seed import paths: thin aliases of the montage package."""
