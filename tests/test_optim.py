"""AdamW's parameter groups (decision_rnn.training.optim): every parameter in exactly one group, by name."""

import pytest
import torch

from decision_rnn import ModelConfig, TrainConfig
from decision_rnn.backbones import BACKBONES
from decision_rnn.models import DecisionRNN
from decision_rnn.training.optim import make_optimizer, parameter_groups


def model(backbone: str, **options) -> DecisionRNN:
    return DecisionRNN(ModelConfig(obs_dim=5, act_dim=2, backbone=backbone, embed_dim=16, n_layers=2,
                                   tokens="compact", return_ln=True, **options))


def expected_no_decay(name: str) -> bool:
    """By name, independently of the module-type rules: norms, biases, the timestep table, LRU's nu/theta/gamma."""
    leaf = name.rsplit(".", 1)[-1]
    return (leaf.startswith("bias") or "ln" in name.split(".")[-2] or name == "embed_timestep.weight"
            or leaf in ("nu_log", "theta_log", "gamma_log"))


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_every_parameter_is_in_exactly_one_group(backbone):
    m = model(backbone)
    decay, no_decay = parameter_groups(m)
    names = dict(m.named_parameters())
    assert not set(decay) & set(no_decay) and set(decay) | set(no_decay) == set(names)
    assert all(names[n] is p for n, p in {**decay, **no_decay}.items())
    for name in names:
        assert (name in no_decay) == expected_no_decay(name), name
    assert decay and no_decay


def test_lru_recurrence_parameters_are_not_decayed_and_its_maps_are():
    decay, no_decay = parameter_groups(model("lru"))
    mixer = "backbone.blocks.0.mixer."
    assert {mixer + n for n in ("nu_log", "theta_log", "gamma_log")} <= set(no_decay)
    assert {mixer + n for n in ("B_re", "B_im", "C_re", "C_im", "D")} <= set(decay)


def test_decay_all_is_adamw_over_every_parameter_and_groups_decay_only_weights():
    m = model("mingru")
    every = make_optimizer(m, TrainConfig(decay_all=True))
    assert len(every.param_groups) == 1 and every.param_groups[0]["params"] == list(m.parameters())
    grouped = make_optimizer(m, TrainConfig(decay_all=False, weight_decay=0.5, lr=0.1))
    assert [g["weight_decay"] for g in grouped.param_groups] == [0.5, 0.0]
    # with zero gradients only the decay moves a parameter: weights shrink, norms and biases stay
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    grouped.step()
    decay, _ = parameter_groups(m)
    for n, p in m.named_parameters():
        shrunk = torch.allclose(p, before[n] * (1 - 0.1 * 0.5))
        assert shrunk if n in decay else torch.equal(p, before[n]), n


def test_a_parameter_without_a_rule_is_an_error():
    m = model("mingru")
    m.register_parameter("gain", torch.nn.Parameter(torch.ones(3)))
    with pytest.raises(ValueError, match="no weight-decay rule for parameter 'gain' of DecisionRNN"):
        parameter_groups(m)
