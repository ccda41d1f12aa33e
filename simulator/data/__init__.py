"""Data files servesim ships (request traces; see ``traces/README.md`` for sources and licences).

The traces are gzip-compressed CSVs; every trace / timestamps loader reads ``.csv.gz`` as it reads
``.csv``. Use these paths instead of spelling out the folder.
"""
from __future__ import annotations

import os

TRACES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traces")
TWITTER_TRACE = os.path.join(TRACES_DIR, "twitter_2021_rps_days01-14.csv.gz")
AZURE_TRACE = os.path.join(TRACES_DIR, "azure_llm_2023_code.csv.gz")

__all__ = ["TRACES_DIR", "TWITTER_TRACE", "AZURE_TRACE"]
