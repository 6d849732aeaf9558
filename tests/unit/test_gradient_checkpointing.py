"""Gradient checkpointing keeps fewer activations and changes no gradient: not of the task
loss, not of SMART's input-only ascent, with the encoder's dropout on."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from mtsmart.errors import ConfigError
from mtsmart.model import MultiTaskModel, TaskHead


def tiny_model(checkpointed: bool) -> MultiTaskModel:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    model = MultiTaskModel(BertModel(config), {"t": (3, 0.1)}, pooling="mean")
    if checkpointed:
        model.enable_gradient_checkpointing()
    return model.train()


def batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (4, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[2:, 9:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}


def loss_and_gradients(model: MultiTaskModel) -> tuple[torch.Tensor, dict, torch.Tensor]:
    data = batch()
    torch.manual_seed(7)  # the same dropout masks for both models
    embeds = model.embed(data["input_ids"]).detach().requires_grad_(True)
    logits = model("t", inputs_embeds=embeds, attention_mask=data["attention_mask"])
    loss = torch.nn.functional.cross_entropy(logits, data["labels"])
    (input_grad,) = torch.autograd.grad(loss, embeds, retain_graph=True)  # SMART's ascent
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, input_grad


def test_checkpointing_changes_no_gradient_with_dropout_on():
    loss, grads, input_grad = loss_and_gradients(tiny_model(checkpointed=False))
    loss_ckpt, grads_ckpt, input_grad_ckpt = loss_and_gradients(tiny_model(checkpointed=True))
    assert torch.equal(loss, loss_ckpt)
    torch.testing.assert_close(input_grad_ckpt, input_grad, rtol=1e-5, atol=1e-7)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], rtol=1e-5, atol=1e-7, msg=name)


def saved_activation_bytes(model: MultiTaskModel) -> int:
    """Bytes autograd keeps for the backward pass of one forward (parameters excluded)."""
    parameters = {p.data_ptr() for p in model.parameters()}
    total = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        if tensor.data_ptr() not in parameters:
            total += tensor.numel() * tensor.element_size()
        return tensor

    data = batch()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.forward_batch("t", data)
    return total


def test_checkpointing_keeps_fewer_activations():
    kept, kept_ckpt = saved_activation_bytes(tiny_model(False)), saved_activation_bytes(tiny_model(True))
    assert kept_ckpt < 0.5 * kept, (kept_ckpt, kept)


def test_an_encoder_without_support_is_refused_in_one_line():
    model = MultiTaskModel.__new__(MultiTaskModel)
    torch.nn.Module.__init__(model)
    model.encoder = TaskHead(8, 2, 0.0)  # any module that is no Hugging Face model
    with pytest.raises(ConfigError, match=r"^training.gradient_checkpointing: the encoder \(TaskHead\) "
                                          r"does not support it; set it to false$"):
        model.enable_gradient_checkpointing()
