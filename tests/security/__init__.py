"""Hostile inputs: playlists, awkward names, fake and absurd media; no shell, no stray writes."""
