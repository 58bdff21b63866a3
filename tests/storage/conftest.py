"""The object-storage servers every test here may use, one of each for the whole session (bucket_kit.py)."""

from tests.bucket_kit import gcs, s3

__all__ = ["gcs", "s3"]
