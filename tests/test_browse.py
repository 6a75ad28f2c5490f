"""Known answers for the rankings behind "from a conflict to its images"
(csba.diagnostics.browse) and the image accessor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from csba.diagnostics.browse import (
    agreement,
    confusion_cell,
    image,
    label_error_candidates,
    pulling_against,
    ranking_values,
    right_wrong,
)
from csba.diagnostics.examples import ExampleScores


def _scores() -> ExampleScores:
    # 6 images, 2 classes: labels 0 0 0 1 1 1
    align = np.array(
        [[0.9, -0.5], [0.2, -0.8], [0.5, np.nan], [-0.3, 0.6], [-0.9, 0.1], [0.0, 0.4]],
        np.float32,
    )
    return ExampleScores(
        alignment=align,
        self_influence=np.array([1.0, 5.0, 2.0, 0.5, 9.0, 3.0], np.float32),
        confidence=np.array([0.9, 0.2, 0.6, 0.8, 0.1, 0.7], np.float32),
        labels=np.array([0, 0, 0, 1, 1, 1]),
        rule=np.ones(6, np.int8),
        prediction=np.array([0, 1, 0, 1, 0, 1]),
    )


def test_pulling_against_ranks_the_most_negative_alignment_first():
    s = _scores()
    assert pulling_against(s, 0, 1).tolist() == [1, 0]  # -0.8, -0.5; image 2's NaN left out
    assert pulling_against(s, 1, 0, k=2).tolist() == [4, 3]  # -0.9, -0.3
    assert pulling_against(s, 1, 0, k=1).tolist() == [4]


def test_label_error_candidates_by_each_ranking():
    s = _scores()
    assert label_error_candidates(s, k=3).tolist() == [4, 1, 5]  # self-influence, high first
    assert label_error_candidates(s, "confidence in the label", k=2).tolist() == [4, 1]
    assert label_error_candidates(s, "own-class alignment", k=2, label=0).tolist() == [1, 2]
    assert label_error_candidates(s, "own-class alignment", k=6).tolist()[:2] == [4, 1]
    v = ranking_values(s, "own-class alignment")  # own: 0.9 0.2 0.5 0.6 0.1 0.4, negated
    np.testing.assert_allclose(v, -np.array([0.9, 0.2, 0.5, 0.6, 0.1, 0.4]), rtol=1e-6)
    with pytest.raises(ValueError, match="unknown ranking 'x'"):
        ranking_values(s, "x")


def test_agreement_known_answers():
    x = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    assert agreement(x, x, 2) == {"top_k_overlap": 1.0, "spearman": pytest.approx(1.0), "k": 2}
    rev = agreement(x, x[::-1], 2)
    assert rev["top_k_overlap"] == 0.0 and rev["spearman"] == pytest.approx(-1.0)
    half = agreement(x, np.array([5.0, 1.0, 3.0, 2.0, 4.0]), 2)  # tops {0,1} vs {0,4}
    assert half["top_k_overlap"] == 0.5
    assert math.isnan(agreement(np.ones(2), np.ones(2), 1)["spearman"])
    with pytest.raises(ValueError, match="different images"):
        agreement(np.ones(3), np.ones(4), 1)


def test_image_accessor_and_its_refusals():
    from types import SimpleNamespace

    grey = torch.arange(2 * 1 * 4 * 4, dtype=torch.uint8).reshape(2, 1, 4, 4)
    bundle = SimpleNamespace(split=lambda name: SimpleNamespace(images=grey))
    out = image(bundle, "train", 1)
    assert out.shape == (4, 4, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], grey[1, 0].numpy())
    np.testing.assert_array_equal(out[..., 2], grey[1, 0].numpy())
    for split, index in (("../etc", 0), ("train", 2), ("train", -1), ("train", "1")):
        with pytest.raises(ValueError):
            image(bundle, split, index)


def test_confusion_cell_and_right_wrong_known_answers():
    # 6 test images, 3 classes; y_pred as stored (not re-derived from the rounded probs)
    y_true = np.array([0, 0, 0, 1, 1, 2])
    probs_a = np.array(
        [
            [0.2, 0.7, 0.1],
            [0.1, 0.8, 0.1],
            [0.6, 0.3, 0.1],
            [0.1, 0.9, 0.0],
            [0.5, 0.5, 0.0],
            [0.3, 0.3, 0.4],
        ]
    )
    pred_a = np.array([1, 1, 0, 1, 0, 2])  # image 4: a tie the stored argmax broke to 0
    # true 0 predicted 1: images 0 (0.7) and 1 (0.8), most confident first
    assert confusion_cell(y_true, pred_a, probs_a, 0, 1).tolist() == [1, 0]
    assert confusion_cell(y_true, pred_a, probs_a, 0, 1, k=1).tolist() == [1]
    assert confusion_cell(y_true, pred_a, probs_a, 1, 0).tolist() == [4]  # the stored argmax
    assert confusion_cell(y_true, pred_a, probs_a, 2, 0).tolist() == []
    pred_b = np.array([0, 1, 1, 1, 1, 0])
    probs_b = np.eye(3)[pred_b]
    # class 0: A right on 2, B wrong on 1 and 2 -> right in A, wrong in B: [2]
    assert right_wrong(y_true, pred_a, pred_b, probs_a, 0).tolist() == [2]
    # and the other way: B right on 0, A wrong on 0
    assert right_wrong(y_true, pred_b, pred_a, probs_b, 0).tolist() == [0]
    # class 1: A right on 3, B right on 3 and 4 -> A-not-B empty, B-not-A [4]
    assert right_wrong(y_true, pred_a, pred_b, probs_a, 1).tolist() == []
    assert right_wrong(y_true, pred_b, pred_a, probs_b, 1).tolist() == [4]
    with pytest.raises(ValueError, match="different images"):
        right_wrong(y_true, pred_a, pred_b[:5], probs_a, 0)
