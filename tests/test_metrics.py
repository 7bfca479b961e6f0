"""Classification metrics and the permutation chance level, against hand-checked cases."""
import numpy as np
from sklearn.metrics import f1_score

from mgpipe.metrics import chance_macro_f1, classification_metrics


def test_classification_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    m = classification_metrics(scores, np.array([0, 1, 1, 2]))
    # class 0: tp 1, fp 1 -> F1 2/3; class 1: tp 1, fn 1 -> 2/3; class 2: 1
    assert np.isclose(m["macro_f1"], (2 / 3 + 2 / 3 + 1) / 3)
    assert m["micro_f1"] == 0.75 and m["top5"] == 1.0


def test_chance_matches_sklearn_and_separates_good_from_constant():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 60)
    pred = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 5, 60))
    r = chance_macro_f1(pred, labels, permutations=500)
    assert np.isclose(r["macro_f1"], f1_score(labels, pred, labels=np.unique(labels),
                                              average="macro", zero_division=0))
    assert r["chance_mean"] < 0.3 < r["macro_f1"] and r["p_value"] == 1 / 501
    # one shuffle by hand: the null is macro-F1 of the same predictions vs shuffled labels
    perm = np.random.default_rng(0).permutation(labels)
    assert np.isclose(chance_macro_f1(pred, labels, permutations=1)["chance_mean"],
                      f1_score(perm, pred, labels=np.unique(labels), average="macro",
                               zero_division=0))
    # a constant prediction scores the same under every shuffle: never above chance
    const = chance_macro_f1(np.zeros(60, int), labels, permutations=200)
    assert np.isclose(const["chance_mean"], const["macro_f1"]) and const["p_value"] == 1.0
