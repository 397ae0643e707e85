"""The JSON contracts between stages: file names, the responsible-use note, typed manifests.

Like facesets/schema.py for the Parquet tables, this is the one place where a manifest is
named, built and read.
"""

from __future__ import annotations

RESPONSIBLE_USE = (
    "Build face sets only of people who agreed to it. Swapping a real person's face into images or video "
    "without their consent can be unlawful (privacy, image rights, harassment and deepfake laws)."
)
