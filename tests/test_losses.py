import math

import torch
import torch.nn.functional as F

from csba.losses import class_weights, focal_loss, make_loss


def test_class_weights_known_answer():
    # N = 100, C = 4: w_c = 100 / (4 * n_c)
    w = class_weights([50, 25, 20, 5])
    torch.testing.assert_close(w, torch.tensor([0.5, 1.0, 1.25, 5.0]))


def test_class_weights_of_an_empty_class_is_zero():
    # N = 20, C = 3 (the empty class still counts in C): 20 / (3 * 10)
    torch.testing.assert_close(class_weights([10, 0, 10]), torch.tensor([2 / 3, 0.0, 2 / 3]))


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    torch.testing.assert_close(focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))


def test_focal_known_value():
    # p_y = 0.5 for both rows: loss = (1 - 0.5)^2 * log 2 * alpha_y, mean over rows.
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    alpha = torch.tensor([1.0, 3.0])
    expected = 0.25 * math.log(2) * (1.0 + 3.0) / 2
    assert abs(focal_loss(logits, y, alpha, gamma=2.0).item() - expected) < 1e-6


def test_weighted_ce_known_value():
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1])
    w = torch.tensor([1.0, 3.0])
    l0 = -math.log(math.exp(2) / (math.exp(2) + 1))
    l1 = math.log(2)
    expected = (1.0 * l0 + 3.0 * l1) / 4.0
    assert abs(make_loss("ce", w)(logits, y).item() - expected) < 1e-6


def test_class_weights_follow_the_logits_device():
    # Training keeps the class weights on the GPU while the per-epoch validation loss is computed
    # from CPU probabilities; the first GPU protocol run crashed on that. "meta" stands in for a
    # second device here (no GPU in the tests).

    weight = class_weights([50, 10, 5])  # on the CPU
    logits = torch.randn(4, 3, device="meta")
    y = torch.zeros(4, dtype=torch.int64, device="meta")
    for kind in ("ce", "focal"):
        loss = make_loss(kind, weight)(logits, y)
        assert loss.device.type == "meta" and loss.shape == ()
