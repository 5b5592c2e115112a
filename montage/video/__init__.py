"""Video jobs built on the ffmpeg layer: segments, the editor and streaming analysis."""
