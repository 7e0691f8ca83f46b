"""The segment store against the IShardStore contract, under each sync policy."""

from __future__ import annotations

from twisted.trial.unittest import TestCase

from robustmq.config import StorageSettings
from robustmq.storage.segment import SegmentShardStore
from robustmq.testing.storage_contract import ShardStoreContractMixin


class _SegmentContract(ShardStoreContractMixin):
    sync = "interval"

    async def makeStore(self) -> SegmentShardStore:
        settings = StorageSettings(
            backend="segment",
            data_dir=self.mktemp(),  # type: ignore[attr-defined]
            sync=self.sync,
            segment_bytes=8192,
            index_interval_bytes=256,
            max_open_files=16,
        )
        store = SegmentShardStore(settings)
        await store.open()
        return store


class SegmentIntervalContractTests(_SegmentContract, TestCase):
    """sync = interval (the default)."""


class SegmentAlwaysContractTests(_SegmentContract, TestCase):
    """sync = always: every append is fsynced before it is acknowledged."""

    sync = "always"


class SegmentOSContractTests(_SegmentContract, TestCase):
    """sync = os: never fsync explicitly."""

    sync = "os"
