"""The spec's ``src.core.analyze_video``: a thin alias of ``montage.video.analysis``."""

from montage.video.analysis import AnalysisResult, analyze_video

__all__ = ["AnalysisResult", "analyze_video"]
