import pytest

from ranknas.evaluator.data.schema import DataSchema
from ranknas.spaces import BUILTIN_SPACES, load_space


@pytest.fixture(scope="session")
def tiny_schema() -> DataSchema:
    return DataSchema(13, (7, 50, 3, 20, 11, 9, 40, 5) + (6,) * 18, name="tiny")


@pytest.fixture(scope="session", params=sorted(BUILTIN_SPACES))
def space(request):
    return load_space(request.param)
