import pytest
import torch

from csba import count_parameters, create_model, list_models

PAPER_COUNTS = {"baseline": 1_350_226, "csba": 1_792_594, "focal": 1_350_226}


def test_registry_lists_the_paper_variants_first():
    assert list_models()[:5] == ["baseline", "csba", "focal", "gradnorm", "class_heads"]
    assert list_models()[5:] == ["logit_adjust", "ldam_drw", "crt", "pcgrad", "pcgrad_control"]


@pytest.mark.parametrize("name,count", PAPER_COUNTS.items())
def test_parameter_counts_match_paper_table_2(name, count):
    assert count_parameters(create_model(name, 6)) == count


def test_gradnorm_adds_three_parameters_and_class_heads_is_about_7_5m():
    base = count_parameters(create_model("baseline", 6))
    assert count_parameters(create_model("gradnorm", 6)) == base + 3
    assert 7_450_000 <= count_parameters(create_model("class_heads", 6)) <= 7_550_000


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'nope'"):
        create_model("nope", 4)


@pytest.mark.parametrize("name", list_models())
def test_forward_backward_finite_and_hooks(name):
    torch.manual_seed(0)
    C = 4
    model = create_model(name, C)
    x = torch.randn(3, 3, 32, 32)
    z = model.forward_features(x)
    assert z.shape == (3, 768, 2, 2)
    parts = model.head_parts(z)
    assert parts.logits.shape == (3, C)
    assert torch.isfinite(parts.logits).all()
    k = C if name == "class_heads" else 3
    assert len(parts.branch_logits) == k == model.num_branches
    if name in ("csba", "class_heads"):
        assert parts.attention.shape == (3, k, 768)
        assert ((parts.attention > 0) & (parts.attention < 1)).all()
    else:
        assert parts.attention is None
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", ["baseline", "csba", "gradnorm", "focal"])
def test_branches_fuse_to_logits_in_eval_mode(name):
    model = create_model(name, 3).eval()
    x = torch.randn(2, 3, 32, 32)
    parts = model.forward_parts(x)
    stacked = torch.stack(parts.branch_logits)
    if name == "gradnorm":
        w = torch.softmax(model.branch_weights, 0)
        torch.testing.assert_close((stacked * w[:, None, None]).sum(0), parts.logits)
    else:
        torch.testing.assert_close(stacked.sum(0), parts.logits)
    torch.testing.assert_close(model(x), parts.logits)


def test_class_heads_concatenate_one_logit_per_head():
    model = create_model("class_heads", 5).eval()
    parts = model.forward_parts(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(torch.cat(parts.branch_logits, 1), parts.logits)


@pytest.mark.parametrize("name", list_models())
def test_layer_groups_and_branches_partition_parameters(name):
    model = create_model(name, 4)
    groups = model.layer_groups()
    expected = ["stem"] + [f"fire{i}" for i in range(1, 9)]
    assert list(groups)[:9] == expected
    assert ("attention" in groups) == (name in ("csba", "class_heads"))
    flat = [n for names in groups.values() for n in names]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters())
    branch_names = [n for names in model.branch_parameter_names() for n in names]
    assert len(branch_names) == len(set(branch_names))
    assert set(branch_names) <= set(groups.get("attention", []) + groups["heads"])
