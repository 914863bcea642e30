"""The Redis backend (``pip install mpstate[redis]``)."""

from mpstate.redis.keys import RedisKeys
from mpstate.redis.store import RedisPipelineStateStore

__all__ = ["RedisKeys", "RedisPipelineStateStore"]
