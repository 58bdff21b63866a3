"""Batch Mode: a job's tasks as shards, one batch each (see runner.py for a shard's life)."""

from batcher.runner.batch.cancel import ShardCancel, cancel_shards
from batcher.runner.batch.runner import BatchRunner
from batcher.runner.batch.shard import BatchSettings

__all__ = ["BatchRunner", "BatchSettings", "ShardCancel", "cancel_shards"]
