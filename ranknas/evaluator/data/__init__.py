"""CTR data: the batch type, schema, the synthetic default and real-data readers."""

from ranknas.evaluator.data.avazu import read_avazu
from ranknas.evaluator.data.base import CTRData, iter_batches
from ranknas.evaluator.data.categorical import EncodingOptions, ReadStats
from ranknas.evaluator.data.criteo import read_criteo
from ranknas.evaluator.data.fetch import default_cache_dir, fetch_dataset, fetch_movielens_100k
from ranknas.evaluator.data.loading import KNOWN_SPECS, load_data
from ranknas.evaluator.data.movielens import load_movielens
from ranknas.evaluator.data.schema import Batch, DataSchema
from ranknas.evaluator.data.synthetic import (
    SyntheticConfig,
    SyntheticTeacher,
    build_teacher,
    generate_synthetic,
    make_synthetic,
)

__all__ = [
    "KNOWN_SPECS",
    "Batch",
    "CTRData",
    "DataSchema",
    "EncodingOptions",
    "ReadStats",
    "SyntheticConfig",
    "SyntheticTeacher",
    "build_teacher",
    "default_cache_dir",
    "fetch_dataset",
    "fetch_movielens_100k",
    "generate_synthetic",
    "iter_batches",
    "load_data",
    "load_movielens",
    "make_synthetic",
    "read_avazu",
    "read_criteo",
]
