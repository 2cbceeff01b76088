"""ranknas: neural-architecture-search benchmarking for recommender ranking (CTR) models."""

__version__ = "0.1.0"
