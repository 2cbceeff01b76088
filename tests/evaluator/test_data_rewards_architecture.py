"""The synthetic default rewards architecture: an interaction model beats logistic regression."""


from ranknas.evaluator.data import make_synthetic
from ranknas.evaluator.training import TrainConfig, evaluate, train
from ranknas.spaces import build_model, load_space, space_from_dict


def sensible_nasrec_full(space):
    """Seven narrow blocks: linear-2d chains with dot-product + FM interactions in b1 and b4."""
    values = {}
    for i in range(1, 8):
        b = f"b{i}"
        values |= {
            f"{b}.dense.op": "dot-product" if i in (1, 4) else "linear-2d",
            f"{b}.dense.width": 64, f"{b}.sparse.op": "linear-3d", f"{b}.sparse.width": 16,
            f"{b}.dense_in.x": ["dense"] if i == 1 else [f"b{i - 1}.dense_out", "dense"],
            f"{b}.sparse_in.x": ["sparse"] if i == 1 else [f"b{i - 1}.sparse_out", "sparse"],
            f"{b}.fm.on": i in (1, 4), f"{b}.merge.on": False}
    return space.canonicalize(values)


def test_nasrec_full_beats_logistic_regression_on_synthetic_data(one_thread):
    data = make_synthetic(330_000, seed=0)
    config = TrainConfig(steps=2000, batch_size=128, lr=0.02, seed=0)  # < 1 epoch
    lr_space = space_from_dict({"name": "logistic_regression", "blocks": [
        {"id": "linear", "ops": ["concat"], "inputs": ["dense", "sparse"]}]})
    full = load_space("nasrec_full")
    scores = {}
    for name, space, arch in (("lr", lr_space, lr_space.canonicalize({})),
                              ("nasrec", full, sensible_nasrec_full(full))):
        model = build_model(space, arch, data.schema, seed=0)
        train(model, data, config)
        scores[name] = evaluate(model, data.valid, data.background_ctr)["ne"]
    assert scores["nasrec"] < scores["lr"] - 0.005, scores
    assert scores["lr"] < 0.95, scores  # and both learn something
