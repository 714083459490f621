"""The scene-classification probes against independent computations: k-NN equal to a brute-force
NumPy k-NN (single- and multi-label), mAP as scikit-learn computes it, the linear probe as
accurate as scikit-learn's logistic regression on the same features, and an attentive probe
that reads the one region a mean-pooled probe cannot."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score

from geomed_mim.evaluation.probes import (
    AttentiveProbe,
    LinearProbe,
    classification_scores,
    knn_predict,
    knn_votes,
    multilabel_scores,
    train_steps,
)


def numpy_knn(train: np.ndarray, labels: np.ndarray, test: np.ndarray, classes: int, k: int,
              temperature: float) -> np.ndarray:  # fmt: skip
    """DINO's weighted k-NN written out: cosine similarities, the k largest, exp(s / T) votes."""
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    preds = []
    for row in b @ a.T:
        nearest = np.argsort(-row, kind="stable")[:k]
        votes = np.zeros(classes)
        for i in nearest:
            votes[labels[i]] += math.exp(row[i] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


def test_knn_equals_brute_force_numpy():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    labels = rng.integers(4, size=300)
    train = centres[labels] + rng.normal(scale=1.5, size=(300, 16))
    test = centres[rng.integers(4, size=120)] + rng.normal(scale=1.5, size=(120, 16))
    for k in (1, 20, 300, 500):  # 500 > N: every training image votes
        expected = numpy_knn(train, labels, test, 4, min(k, 300), 0.07)
        got = knn_predict(torch.tensor(train), torch.tensor(labels), torch.tensor(test), 4, k,
                          0.07, chunk=50).numpy()  # fmt: skip
        np.testing.assert_array_equal(got, expected)


def test_scores_are_top1_and_macro_f1():
    target, pred = np.array([0, 0, 1, 1, 2, 2]), np.array([0, 1, 1, 1, 0, 2])
    scores = classification_scores(target, pred, 4)  # class 3 absent: F1 0, as zero_division=0
    assert scores["top1"] == 4 / 6
    expected = f1_score(target, pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    assert math.isclose(scores["macro_f1"], expected)


def test_linear_probe_as_accurate_as_logistic_regression():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(5, 32)) * 0.6
    y = rng.integers(5, size=600)
    x = (centres[y] + rng.normal(size=(600, 32))) * 40 + 300  # far from unit scale
    xt, yt = torch.tensor(x[:400], dtype=torch.float32), torch.tensor(y[:400])
    xv, yv = torch.tensor(x[400:500], dtype=torch.float32), y[400:500]
    probe = LinearProbe(xt.mean(0), xt.std(0), 5)

    def batch(g):
        pick = torch.randint(400, (64,), generator=g)
        return xt[pick], yt[pick]

    def select():
        return float((probe(xv).argmax(1).numpy() == yv).mean())

    train_steps(probe, batch, 300, 50, 1e-2, 0, select)
    ours = (probe(torch.tensor(x[500:], dtype=torch.float32)).argmax(1).numpy() == y[500:]).mean()
    sk = LogisticRegression(max_iter=2000).fit(x[:400], y[:400]).score(x[500:], y[500:])
    assert sk > 0.6  # the task is learnable, not trivial
    assert abs(ours - sk) <= 0.08, (ours, sk)


def region_tokens(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens [n, 16, 8] with fixed positional codes: class 1 adds a signal vector to token 0 (one
    region), class 0 adds it to one of the other tokens. Mean pooling sees the same distribution
    for both classes; only where the signal sits tells them apart."""
    positions = np.random.default_rng(123).normal(size=(16, 8))
    signal = np.zeros(8)
    signal[0] = 4.0
    labels = rng.integers(2, size=n)
    tokens = positions[None] + rng.normal(scale=0.3, size=(n, 16, 8))
    where = np.where(labels == 1, 0, rng.integers(1, 16, size=n))
    tokens[np.arange(n), where] += signal
    return torch.tensor(tokens, dtype=torch.float32), torch.tensor(labels)


def test_attentive_probe_reads_a_region_that_mean_pooling_cannot():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    (xt, yt), (xs, ys) = region_tokens(512, rng), region_tokens(256, rng)

    def fit(model, pooled: bool) -> float:
        train = xt.mean(1) if pooled else xt
        test = xs.mean(1) if pooled else xs

        def batch(g):
            pick = torch.randint(len(yt), (64,), generator=g)
            return train[pick], yt[pick]

        train_steps(model, batch, 300, 300, 3e-3, 0, None)
        with torch.no_grad():
            return float((model(test).argmax(1) == ys).float().mean())

    attentive = fit(AttentiveProbe(8, 2, heads=2), pooled=False)
    mean_pooled = fit(LinearProbe(xt.mean(1).mean(0), xt.mean(1).std(0), 2), pooled=True)
    assert attentive > 0.9, attentive
    assert mean_pooled < 0.7, mean_pooled


def test_train_steps_keeps_the_best_held_out_state():
    model = torch.nn.Linear(1, 2)
    scores = iter([0.2, 0.9, 0.5, 0.9])  # checked at steps 2, 4, 6 and the last (7)
    kept = {}

    def select():
        score = next(scores)
        if score == 0.9 and not kept:
            kept.update({k: v.clone() for k, v in model.state_dict().items()})
        return score

    def batch(g):
        return torch.randn(8, 1, generator=g), torch.randint(2, (8,), generator=g)

    trained = train_steps(model, batch, 7, 2, 0.1, 0, select)
    assert (trained.step, trained.select_score) == (4, 0.9)  # the first of equals
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, kept[k])


def test_knn_votes_equal_brute_force_numpy_for_multilabel_targets():
    rng = np.random.default_rng(2)
    train, test = rng.normal(size=(80, 12)), rng.normal(size=(30, 12))
    targets = (rng.random((80, 5)) < 0.3).astype(np.float64)
    got = knn_votes(torch.tensor(train), torch.tensor(targets), torch.tensor(test), 20, 0.07,
                    chunk=7).numpy()  # fmt: skip
    a = train / np.linalg.norm(train, axis=1, keepdims=True)
    b = test / np.linalg.norm(test, axis=1, keepdims=True)
    for row, votes in zip(b @ a.T, got, strict=True):
        nearest = np.argsort(-row, kind="stable")[:20]
        weights = np.exp(row[nearest] / 0.07)
        np.testing.assert_allclose(votes, weights @ targets[nearest] / weights.sum(), rtol=1e-4)


def test_map_leaves_out_classes_without_a_positive():
    target = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1], [0.3, 0.4, 0.9], [0.1, 0.9, 0.2]])
    got = multilabel_scores(target, scores)
    per_class = [average_precision_score(target[:, c], scores[:, c]) for c in (0, 1)]
    assert math.isclose(got["map"], float(np.mean(per_class)))
    assert math.isclose(got["micro_map"], average_precision_score(target.ravel(), scores.ravel()))
