"""FFmpeg layer: find, probe, profile, build, run, manage and chunk ffmpeg processes."""
