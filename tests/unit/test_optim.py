"""Parameter groups of the optimizer: weight decay, layer-wise learning-rate decay and the
heads' own rate, and the rate TensorBoard shows."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from transformers import BertConfig, BertModel

from mtsmart.config import OptimConfig
from mtsmart.errors import ConfigError
from mtsmart.model import MultiTaskModel, TaskHead
from mtsmart.optim import build_optimizer, linear_warmup_decay, lr_multiplier, lr_scales, scheduled_lr


def tiny_model(layers: int = 3) -> MultiTaskModel:
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    return MultiTaskModel(BertModel(config), {"a": (2, 0.1), "b": (1, 0.1)}, pooling="pooler")


def test_defaults_keep_one_rate_and_decay_only_matrices():
    model = tiny_model()
    optimizer = build_optimizer(model, OptimConfig(lr=1e-3, weight_decay=0.01))
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(1e-3, 0.01), (1e-3, 0.0)]
    decayed = {id(p) for p in optimizer.param_groups[0]["params"]}
    for name, param in model.named_parameters():
        assert (id(param) in decayed) == (param.ndim >= 2), name


def test_layer_decay_and_head_scale_per_parameter():
    model = tiny_model(layers=3)
    scales = lr_scales(model, OptimConfig(layer_decay=0.5, head_lr_scale=10.0))
    expected = {
        "heads.a.linear.weight": 10.0, "heads.b.linear.bias": 10.0,
        "encoder.pooler.dense.weight": 1.0,  # the pooler sits with the heads, at depth L + 1
        "encoder.encoder.layer.2.output.dense.weight": 0.5,
        "encoder.encoder.layer.1.attention.self.query.weight": 0.25,
        "encoder.encoder.layer.0.intermediate.dense.bias": 0.125,
        "encoder.embeddings.word_embeddings.weight": 0.0625,
        "encoder.embeddings.LayerNorm.weight": 0.0625,
    }
    for name, scale in expected.items():
        assert scales[name] == pytest.approx(scale), name
    assert set(scales) == {n for n, _ in model.named_parameters()}


def test_each_group_follows_the_schedule_at_its_own_multiple():
    model = tiny_model(layers=2)
    cfg = OptimConfig(lr=2e-3, layer_decay=0.8, head_lr_scale=3.0)
    optimizer = build_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: linear_warmup_decay(u, 2, 10))
    scales = lr_scales(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    for _ in range(4):
        optimizer.step()
        scheduler.step()
    factor = linear_warmup_decay(4, 2, 10)
    assert scheduled_lr(optimizer) == pytest.approx(2e-3 * factor)
    for group in optimizer.param_groups:
        for param in group["params"]:
            assert group["lr"] == pytest.approx(2e-3 * factor * scales[names[id(param)]])
    assert {round(g["lr_scale"], 6) for g in optimizer.param_groups} == {3.0, 1.0, 0.8, 0.64, round(0.8 ** 3, 6)}


def test_layer_decay_needs_numbered_layers():
    model = MultiTaskModel.__new__(MultiTaskModel)
    torch.nn.Module.__init__(model)
    model.encoder = TaskHead(8, 2, 0.0)  # no layer.N in its names
    model.heads = torch.nn.ModuleDict()
    assert lr_scales(model, OptimConfig()) == {"encoder.linear.weight": 1.0, "encoder.linear.bias": 1.0}
    with pytest.raises(ConfigError, match=r"^training.optim.layer_decay: no numbered layers"):
        lr_scales(model, replace(OptimConfig(), layer_decay=0.9))


def test_the_embeddings_move_least_after_a_step():
    """The same gradient everywhere: each parameter's first AdamW step is lr·scale·sign."""
    model = tiny_model(layers=2)
    cfg = OptimConfig(lr=1e-2, layer_decay=0.5, weight_decay=0.0, fused=False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(model, cfg)
    for param in model.parameters():
        param.grad = torch.ones_like(param)
    optimizer.step()
    moved = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    assert math.isclose(moved["encoder.embeddings.word_embeddings.weight"], 1e-2 * 0.5 ** 3, rel_tol=1e-3)
    assert math.isclose(moved["encoder.encoder.layer.1.output.dense.weight"], 1e-2 * 0.5, rel_tol=1e-3)
    assert math.isclose(moved["heads.a.linear.weight"], 1e-2, rel_tol=1e-3)


def test_schedules_share_the_warm_up_and_end_as_named():
    warmup, total = 10, 110
    for schedule in ("linear", "cosine", "constant"):
        assert [lr_multiplier(u, warmup, total, schedule) for u in range(warmup)] == \
            [(u + 1) / warmup for u in range(warmup)]
    assert [lr_multiplier(u, warmup, total) for u in range(total)] == \
        [linear_warmup_decay(u, warmup, total) for u in range(total)]  # the default is the old one
    assert lr_multiplier(60, warmup, total, "cosine") == pytest.approx(0.5)  # halfway down
    assert lr_multiplier(35, warmup, total, "cosine") > lr_multiplier(35, warmup, total, "linear")
    assert lr_multiplier(total, warmup, total, "cosine") == pytest.approx(0.0)
    assert {lr_multiplier(u, warmup, total, "constant") for u in range(warmup, total)} == {1.0}


def test_linear_decay_by_hand():
    # 10 warm-up updates of 110: full rate at the end of the warm-up, half way down at 60
    assert [linear_warmup_decay(u, 10, 110) for u in (9, 10, 60, 109)] == pytest.approx([1.0, 1.0, 0.5, 0.01])
