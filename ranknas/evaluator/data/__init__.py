"""CTR data: the batch type, schema, the synthetic default and real-data readers."""

from ranknas.evaluator.data.base import CTRData, iter_batches
from ranknas.evaluator.data.schema import Batch, DataSchema

__all__ = ["Batch", "CTRData", "DataSchema", "iter_batches"]
