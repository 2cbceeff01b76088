from pathlib import Path

import pytest
import yaml

from ranknas.config import config_from_dict, load_config
from ranknas.errors import ConfigError

EXAMPLE = Path(__file__).parents[1] / "examples" / "experiment.yaml"


def base():
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_config_loads():
    config = load_config(EXAMPLE)
    assert [s.label for s in config.strategies] == ["random", "evolution", "NSGAIISampler"]
    assert config.objectives[0].name == "ne" and config.budget == {"trials": 60}
    assert config.train_config().examples == 200_000


def test_overrides_are_dotted_and_typed():
    config = load_config(EXAMPLE, ["budget.trials=5", "train.lr=0.1", "strategies.1.population=4",
                                   "tracking.uri=http://127.0.0.1:5000"])
    assert config.budget == {"trials": 5}
    assert config.train["lr"] == 0.1
    assert config.strategies[1].options["population"] == 4
    assert config.tracking["uri"] == "http://127.0.0.1:5000"


@pytest.mark.parametrize(("mutate", "where", "needle"), [
    (lambda d: d.pop("space"), "space", "missing"),
    (lambda d: d.update(strategies=[{"name": "evo"}]), "strategies[0].name", "known:"),
    (lambda d: d.update(objectives=[{"name": "speed"}]), "objectives[0].name", "known:"),
    (lambda d: d.update(objectives=[{"name": "ne", "direction": "down"}]),
     "objectives[0].direction", "minimize or maximize"),
    (lambda d: d.update(budget={"trails": 3}), "budget.trails", "allowed: trials, examples"),
    (lambda d: d.update(budget={"trials": -1}), "budget.trials", "integer >= 1"),
    (lambda d: d["train"].update(optimizer="adamw"), "train.optimizer", "adagrad"),
    (lambda d: d["train"].update(batch_sise=3), "train.batch_sise", "allowed:"),
    (lambda d: d.update(executor={"name": "dask"}), "executor.name", "local, ray"),
    (lambda d: d.update(tracking={"uri": 5}), "tracking.uri", "URI"),
    (lambda d: d.update(tracking={"enabled": "no"}), "tracking.enabled", "true or false"),
    (lambda d: d.update(constraints={"max_flops": "big"}), "constraints.max_flops", "positive"),
    (lambda d: d.update(colour="red"), "config.colour", "unknown key"),
])
def test_errors_name_the_key(mutate, where, needle):
    doc = base()
    mutate(doc)
    with pytest.raises(ConfigError) as err:
        config_from_dict(doc)
    assert err.value.where == where, str(err.value)
    assert needle in err.value.message


def test_file_errors_carry_the_file_name(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("space: dlrm\nstrategies: [random\n")
    with pytest.raises(ConfigError, match=r"^exp.yaml:\d+: malformed YAML"):
        load_config(path)
    path.write_text(yaml.safe_dump({**base(), "budget": {"trials": "many"}}))
    with pytest.raises(ConfigError, match=r"^exp.yaml: budget.trials"):
        load_config(path)


def test_strategy_labels_are_unique():
    doc = base()
    doc["strategies"] = [{"name": "random"}, {"name": "random"}]
    assert [s.label for s in config_from_dict(doc).strategies] == ["random", "random-2"]
