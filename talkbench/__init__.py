"""talkbench: intelligibility, lip-sync and image-quality scores for talking-face generators."""

__version__ = "0.1.0"
