"""The s3 store against the IShardStore contract, on a real SeaweedFS."""

from __future__ import annotations

import os
import uuid

from s3server import seaweed
from twisted.trial.unittest import TestCase

from robustmq.config import StorageSettings
from robustmq.storage.s3 import S3ShardStore
from robustmq.testing.storage_contract import ShardStoreContractMixin


class S3ContractTests(ShardStoreContractMixin, TestCase):
    """S3ShardStore honours the shared contract (each test on its own prefix)."""

    cacheDir = False

    async def makeStore(self) -> S3ShardStore:
        weed = seaweed()
        settings = StorageSettings(
            backend="s3",
            s3_endpoint=weed.endpoint,
            s3_bucket="contract",
            s3_prefix=f"t-{uuid.uuid4().hex}/",
            s3_flush_interval_ms=2,
            s3_cache_dir=os.path.abspath(self.mktemp()) if self.cacheDir else "",
        )
        store = S3ShardStore(settings)
        await store.open()
        return store


class S3DiskCacheContractTests(S3ContractTests):
    """The same with the disk tier of the read cache and a tiny memory tier."""

    cacheDir = True
