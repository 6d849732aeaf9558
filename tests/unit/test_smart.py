"""SMART's pure functions, the mean teacher, and the objective's forward-pass accounting."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtsmart import smart
from mtsmart.config import SmartConfig
from mtsmart.ema import MeanTeacher
from mtsmart.losses import squared_error, symmetric_kl
from mtsmart.model import MultiTaskModel
from mtsmart.objective import batch_objective
from mtsmart.task_types import get_task_type


def tiny_model(num_labels: int = 3, dropout: float = 0.1) -> MultiTaskModel:
    from transformers import BertConfig

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = MultiTaskModel.from_config(config, [])
    model.add_head("cls", num_labels, dropout)
    model.add_head("reg", 1, dropout)
    return model


def tiny_batch(batch: int = 4, seq: int = 10, num_labels: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 50, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, 6:] = 0  # one padded example
    mask[1, 8:] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "labels": torch.randint(0, num_labels, (batch,), generator=g)}


# --------------------------------------------------------------------- divergences
def test_symmetric_kl_matches_hand_computation_and_properties():
    torch.manual_seed(0)
    a, b = torch.randn(5, 3), torch.randn(5, 3)
    p, q = a.softmax(-1), b.softmax(-1)
    hand = ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    assert torch.allclose(symmetric_kl(a, b), hand, atol=1e-6)
    assert torch.allclose(symmetric_kl(a, b), symmetric_kl(b, a), atol=1e-7)
    assert symmetric_kl(a, a).abs() < 1e-7
    assert symmetric_kl(a, b) > 0
    # KL via torch for one direction plus the other
    torch_kl = F.kl_div(q.log(), p, reduction="batchmean") + F.kl_div(p.log(), q, reduction="batchmean")
    assert torch.allclose(symmetric_kl(a, b), torch_kl, atol=1e-6)


def test_symmetric_kl_stays_float32_under_bf16_inputs():
    a = torch.randn(4, 2).bfloat16()
    b = torch.randn(4, 2).bfloat16()
    assert symmetric_kl(a, b).dtype == torch.float32
    assert squared_error(a[:, 0], b[:, 0]).dtype == torch.float32


def test_regression_divergence_is_squared_error():
    a, b = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.5, 0.0, 3.0])
    assert math.isclose(float(squared_error(a, b)), (0.25 + 4.0 + 0.0) / 3, rel_tol=1e-6)
    assert get_task_type("regression").divergence(a, b) == squared_error(a, b)
    assert get_task_type("classification").divergence(a[None], b[None]) == symmetric_kl(a[None], b[None])


# --------------------------------------------------------------------- perturbation
@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_projection_and_normalisation_per_token(norm):
    torch.manual_seed(0)
    x = torch.randn(2, 5, 8) * 3
    projected = smart.project_per_token(x, 0.5, norm)
    assert (smart.token_norms(projected, norm) <= 0.5 + 1e-6).all()
    small = x * 1e-3
    assert torch.allclose(smart.project_per_token(small, 0.5, norm), small)  # inside: unchanged
    unit = smart.normalize_per_token(x, norm)
    assert torch.allclose(smart.token_norms(unit, norm), torch.ones(2, 5, 1), atol=1e-5)


def _recording_forward(model, task, mask):
    inputs = []

    def forward(embeds):
        inputs.append(embeds.detach().clone())
        return model(task, inputs_embeds=embeds, attention_mask=mask)

    return forward, inputs


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_noise_within_epsilon_and_zero_at_padding(norm):
    model = tiny_model()
    batch = tiny_batch()
    embeds = model.embed(batch["input_ids"])
    forward, inputs = _recording_forward(model, "cls", batch["attention_mask"])
    clean = forward(embeds)
    eps = 0.05
    result = smart.adversarial_loss(forward, embeds, clean, batch["attention_mask"], symmetric_kl,
                                    epsilon=eps, noise_std=0.01, step_size=0.1, num_steps=2, norm=norm)
    assert result.is_finite and result.loss > 0
    noise = inputs[-1] - embeds.detach()
    norms = smart.token_norms(noise, norm).squeeze(-1)
    assert (norms <= eps * (1 + 1e-4)).all()
    assert (noise[batch["attention_mask"] == 0] == 0).all()
    assert (norms[batch["attention_mask"] == 1] > 0).all()
    # clean + K ascent forwards + final forward
    assert len(inputs) == 1 + 2 + 1


def test_ascent_beats_random_noise_of_the_same_norm():
    model = tiny_model()
    model.eval()  # no dropout: the comparison is about the direction only
    batch = tiny_batch(batch=8)
    mask = batch["attention_mask"]
    embeds = model.embed(batch["input_ids"]).detach()
    forward, inputs = _recording_forward(model, "cls", mask)
    clean = forward(embeds)
    eps = 0.5
    adv_divs, rand_divs = [], []
    for seed in range(5):
        torch.manual_seed(seed)
        res = smart.adversarial_loss(forward, embeds, clean, mask, symmetric_kl, epsilon=eps,
                                     noise_std=1e-3, step_size=10.0, num_steps=1, norm="inf")
        adv_divs.append(float(res.loss.detach()))
        adv_noise = inputs[-1] - embeds
        random = torch.randn_like(embeds)
        random = random / smart.token_norms(random, "inf") * smart.token_norms(adv_noise, "inf")
        random = random * mask.unsqueeze(-1)
        rand_divs.append(float(symmetric_kl(forward(embeds + random), clean).detach()))
    assert sum(adv_divs) / 5 > 2 * sum(rand_divs) / 5


def test_ascent_accumulates_no_parameter_gradient():
    model = tiny_model()
    batch = tiny_batch()
    embeds = model.embed(batch["input_ids"])
    forward, _ = _recording_forward(model, "cls", batch["attention_mask"])
    clean = forward(embeds)
    smart.adversarial_loss(forward, embeds, clean, batch["attention_mask"], symmetric_kl,
                           epsilon=0.01, noise_std=0.01, step_size=0.1, num_steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_non_finite_values_skip_the_regulariser():
    model = tiny_model()
    batch = tiny_batch()
    embeds = model.embed(batch["input_ids"])

    def broken(e):
        return model("cls", inputs_embeds=e, attention_mask=batch["attention_mask"]) * float("nan")

    clean = model("cls", inputs_embeds=embeds, attention_mask=batch["attention_mask"])
    result = smart.adversarial_loss(broken, embeds, clean, batch["attention_mask"], symmetric_kl,
                                    epsilon=0.01, noise_std=0.01, step_size=0.1)
    assert not result.is_finite
    assert float(result.loss) == 0.0 and not result.loss.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_gradient_flows_through_both_sides_of_the_final_term():
    model = tiny_model()
    batch = tiny_batch()
    embeds = model.embed(batch["input_ids"])
    forward, _ = _recording_forward(model, "cls", batch["attention_mask"])
    clean = forward(embeds)
    result = smart.adversarial_loss(forward, embeds, clean, batch["attention_mask"], symmetric_kl,
                                    epsilon=0.05, noise_std=0.01, step_size=0.1)
    result.loss.backward()
    # the word-embedding table gets gradient (x keeps its graph) and so does the head
    assert model.encoder.get_input_embeddings().weight.grad.abs().sum() > 0
    assert model.heads["cls"].linear.weight.grad.abs().sum() > 0


def _dropout_free(batch_size: int = 4):
    """A tiny model without dropout, a batch's attention mask and its word embeddings."""
    model = tiny_model()
    model.eval()
    batch = tiny_batch(batch=batch_size)
    return model, batch["attention_mask"], model.embed(batch["input_ids"])


def test_one_small_ascent_step_raises_the_divergence():
    """Inside a large ball a small step is not hidden by the projection: it must go up the
    divergence (a sign error would go down it as surely)."""
    model, mask, embeds = _dropout_free(batch_size=8)
    embeds = embeds.detach()
    forward, inputs = _recording_forward(model, "cls", mask)
    clean = forward(embeds)
    for seed in range(3):
        torch.manual_seed(seed)
        del inputs[1:]
        result = smart.adversarial_loss(forward, embeds, clean, mask, symmetric_kl, epsilon=10.0,
                                        noise_std=1e-2, step_size=1e-3, num_steps=1, norm="l2")
        with torch.no_grad():
            at_the_start = float(symmetric_kl(model("cls", inputs_embeds=inputs[1], attention_mask=mask), clean))
        assert float(result.loss.detach()) > at_the_start


def test_the_start_noise_has_std_sigma_and_each_step_moves_eta():
    model, mask, embeds = _dropout_free()
    embeds = embeds.detach()
    forward, inputs = _recording_forward(model, "cls", mask)
    clean = forward(embeds)
    smart.adversarial_loss(forward, embeds, clean, mask, symmetric_kl, epsilon=10.0, noise_std=1e-3,
                           step_size=1e-4, num_steps=1, norm="inf")
    start, after_one_step = inputs[1] - embeds, inputs[2] - embeds
    real = mask.bool()
    assert float(start[real].std()) == pytest.approx(1e-3, rel=0.1)
    step = smart.token_norms(after_one_step - start, "inf").squeeze(-1)[real]
    assert torch.allclose(step, torch.full_like(step, 1e-4), rtol=1e-2)


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_noise_is_zero_at_padding_even_where_padding_reaches_the_output(norm):
    """In BERT the gradient at padding is zero, which would hide a missing mask; here the
    padded positions move the output, so only the mask keeps the noise off them."""
    weight = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[0, 3:] = 0
    inputs = []

    def forward(e):
        inputs.append(e.detach().clone())
        return (e.tanh() @ weight).sum(1)

    embeds = torch.randn(2, 5, 8)
    smart.adversarial_loss(forward, embeds, forward(embeds), mask, symmetric_kl, epsilon=0.1,
                           noise_std=0.05, step_size=0.05, num_steps=2, norm=norm)
    assert len(inputs) == 1 + 2 + 1
    for seen in inputs[1:]:  # the start noise, after each ascent step, and the final pass
        assert ((seen - embeds)[mask == 0] == 0).all()
        assert ((seen - embeds)[mask == 1] != 0).any()


def test_each_side_of_the_final_term_carries_gradient():
    """SMART.md: R_s's gradient reaches θ through f(x + ν) and through f(x)."""
    model, mask, embeds = _dropout_free()
    forward, _ = _recording_forward(model, "cls", mask)
    clean = forward(embeds)
    kwargs = dict(epsilon=0.05, noise_std=0.01, step_size=0.1)
    result = smart.adversarial_loss(forward, embeds, clean, mask, symmetric_kl, **kwargs)
    (through_clean,) = torch.autograd.grad(result.loss, [clean], allow_unused=True)
    assert through_clean is not None and through_clean.abs().sum() > 0
    result = smart.adversarial_loss(forward, embeds, clean.detach(), mask, symmetric_kl, **kwargs)
    (through_perturbed,) = torch.autograd.grad(result.loss, [embeds], allow_unused=True)
    assert through_perturbed is not None and through_perturbed.abs().sum() > 0


def test_a_non_finite_final_term_or_ascent_skips_only_the_regulariser():
    model, mask, embeds = _dropout_free()
    clean = model("cls", inputs_embeds=embeds, attention_mask=mask)
    calls = []

    def nan_on(call):
        def forward(e):
            calls.append(1)
            out = model("cls", inputs_embeds=e, attention_mask=mask)
            return out * math.nan if len(calls) == call else out
        return forward

    # the ascent finite, the final pass not: the regulariser is dropped, not the batch
    result = smart.adversarial_loss(nan_on(2), embeds, clean, mask, symmetric_kl,
                                    epsilon=0.05, noise_std=0.01, step_size=0.1)
    assert not result.is_finite and float(result.loss) == 0.0 and len(calls) == 2
    # the ascent not finite: it stops there, with no final pass and a finite logged norm
    calls.clear()
    result = smart.adversarial_loss(nan_on(1), embeds, clean, mask, symmetric_kl,
                                    epsilon=0.05, noise_std=0.01, step_size=0.1, num_steps=2)
    assert not result.is_finite and len(calls) == 1 and math.isfinite(result.perturbation_norm)


def test_a_non_finite_teacher_skips_only_the_bregman_term():
    model = tiny_model()
    teacher = MeanTeacher(model)
    with torch.no_grad():
        teacher.model.heads["cls"].linear.weight.fill_(math.nan)
    losses = batch_objective(model, teacher, "cls", get_task_type("classification"), tiny_batch(),
                             SmartConfig(mode="bregman"), adv_weight=0.0, prox_weight=1.0)
    assert torch.isfinite(losses.total) and losses.regularizer_skipped
    assert losses.teacher_divergence is None and losses.prox_loss is None
    assert float(losses.total.detach()) == pytest.approx(losses.task_loss)


def test_a_non_finite_perturbation_flags_the_regulariser_skipped():
    losses = batch_objective(tiny_model(), None, "cls", get_task_type("classification"), tiny_batch(),
                             SmartConfig(mode="adversarial"), adv_weight=1.0, prox_weight=0.0,
                             perturbation_scale=math.inf)  # ν = ±inf, the clean pass finite
    assert torch.isfinite(losses.total) and losses.regularizer_skipped and losses.adv_loss is None


def test_the_embedding_norm_scale_reaches_epsilon_sigma_and_eta(monkeypatch):
    seen = {}
    real = smart.adversarial_loss
    monkeypatch.setattr(smart, "adversarial_loss", lambda *a, **k: (seen.update(k), real(*a, **k))[1])
    batch_objective(tiny_model(), None, "cls", get_task_type("classification"), tiny_batch(),
                    SmartConfig(mode="adversarial", epsilon=1e-3, noise_std=2e-4, step_size=3e-3),
                    adv_weight=1.0, prox_weight=0.0, perturbation_scale=7.0)
    assert (seen["epsilon"], seen["noise_std"], seen["step_size"]) == pytest.approx((7e-3, 1.4e-3, 2.1e-2))


# --------------------------------------------------------------------- schedules
def test_teacher_momentum_schedule_and_weight_ramp():
    betas = [smart.teacher_momentum(u, 100, 0.999, 0.99, 0.1) for u in range(100)]
    assert betas[:10] == [0.99] * 10 and betas[10:] == [0.999] * 90
    assert smart.ramp_weight(0, 100, 2.0, 0.0) == 2.0
    ramp = [smart.ramp_weight(u, 100, 2.0, 0.2) for u in range(100)]
    assert ramp[0] == pytest.approx(0.1) and ramp[19] == pytest.approx(2.0) and ramp[50] == 2.0
    assert all(b >= a for a, b in zip(ramp, ramp[1:]))


# --------------------------------------------------------------------- teacher
def test_mean_teacher_is_a_true_copy_and_follows_the_formula():
    student = tiny_model()
    teacher = MeanTeacher(student)
    for (name, t), s in zip(teacher.model.named_parameters(), student.parameters()):
        assert t.data_ptr() != s.data_ptr(), name
        assert not t.requires_grad
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(student, beta=0.9)
    student_state = student.state_dict()
    for key, value in teacher.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * before[key] + 0.1 * student_state[key]
            assert torch.allclose(value, expected, atol=1e-6), key
        else:  # integer buffers (position ids) are copied, never averaged
            assert torch.equal(value, student_state[key]), key
    # changing the student again does not touch the teacher (no aliasing)
    snapshot = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(2)
    assert all(torch.equal(v, snapshot[k]) for k, v in teacher.state_dict().items())
    assert not teacher.model.training


def test_teacher_forward_has_no_graph_and_no_dropout():
    student = tiny_model()
    teacher = MeanTeacher(student)
    batch = tiny_batch()
    kwargs = dict(inputs_embeds=teacher.model.embed(batch["input_ids"]),
                  attention_mask=batch["attention_mask"])
    out1 = teacher.forward("cls", **kwargs)
    out2 = teacher.forward("cls", **kwargs)
    assert not out1.requires_grad and out1.is_inference()  # SMART.md: inference mode
    assert torch.equal(out1, out2)
    # ...and its outputs still serve as D's constant side in the student's backward
    student_out = student("cls", inputs_embeds=student.embed(batch["input_ids"]),
                          attention_mask=batch["attention_mask"])
    smart.bregman_proximal(student_out, out1, symmetric_kl).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_a_fresh_teachers_divergence_is_the_students_dropout():
    """D compares the student in train mode with the teacher in eval mode: at θ̃ = θ it is
    the dropout's effect alone, zero once the model has no dropout (docs/smart.md)."""
    batch = tiny_batch()
    cfg = SmartConfig(mode="bregman")
    divergences = {}
    for dropout in (0.1, 0.0):
        model = tiny_model(dropout=dropout)
        model.train()
        losses = batch_objective(model, MeanTeacher(model), "cls", get_task_type("classification"),
                                 batch, cfg, adv_weight=0.0, prox_weight=1.0)
        divergences[dropout] = losses.teacher_divergence
    assert divergences[0.1] > 1e-4
    assert divergences[0.0] == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------- objective
class ForwardCounter:
    def __init__(self, module):
        self.count = 0
        module.register_forward_hook(self)

    def __call__(self, *args):
        self.count += 1


@pytest.mark.parametrize("adv,prox,student_forwards,teacher_forwards", [
    (0.0, 0.0, 1, 0),  # plain: one forward
    (1.0, 0.0, 3, 0),  # clean + ascent + final perturbed
    (0.0, 1.0, 1, 1),  # clean + graph-free teacher
    (1.0, 1.0, 3, 1),
    (2.0, 0.5, 3, 1),  # each weight multiplies its own term in the total
])
def test_zero_weights_skip_their_forward_passes(adv, prox, student_forwards, teacher_forwards):
    model = tiny_model()
    teacher = MeanTeacher(model)
    student_calls = ForwardCounter(model.encoder)
    teacher_calls = ForwardCounter(teacher.model.encoder)
    cfg = SmartConfig(mode="full", epsilon=0.01, noise_std=0.01, step_size=0.1)
    losses = batch_objective(model, teacher, "cls", get_task_type("classification"), tiny_batch(),
                             cfg, adv_weight=adv, prox_weight=prox)
    assert student_calls.count == student_forwards
    assert teacher_calls.count == teacher_forwards
    assert (losses.adv_loss is not None) == (adv > 0)
    assert (losses.prox_loss is not None) == (prox > 0)
    expected = losses.task_loss + adv * (losses.adv_divergence or 0.0) + prox * (losses.teacher_divergence or 0.0)
    assert losses.adv_loss == pytest.approx(adv * losses.adv_divergence) if adv > 0 else losses.adv_loss is None
    assert float(losses.total.detach()) == pytest.approx(expected, rel=1e-5)


def test_regression_objective_uses_squared_error():
    model = tiny_model()
    teacher = MeanTeacher(model)
    batch = tiny_batch()
    batch["labels"] = torch.rand(4) * 5
    cfg = SmartConfig(mode="full", epsilon=0.01, noise_std=0.01, step_size=0.1)
    losses = batch_objective(model, teacher, "reg", get_task_type("regression"), batch, cfg,
                             adv_weight=1.0, prox_weight=1.0)
    model.eval()
    with torch.no_grad():
        student = model.forward_batch("reg", batch)
        teacher_out = teacher.model.forward_batch("reg", batch)
    # with dropout off in both, an untouched teacher equals the student: D = 0
    assert float(squared_error(student, teacher_out)) == pytest.approx(0.0, abs=1e-10)
    assert losses.adv_loss is not None and losses.adv_loss >= 0


def test_teacher_horizon_caps_momentum_to_the_run_length():
    short = [smart.teacher_momentum(u, 200, 0.999, 0.99, 0.1, horizon_fraction=0.1) for u in range(200)]
    assert short[0] == pytest.approx(0.95) and short[150] == pytest.approx(0.95)  # 1 - 1/20
    long = [smart.teacher_momentum(u, 100_000, 0.999, 0.99, 0.1, horizon_fraction=0.1) for u in (0, 50_000)]
    assert long == [0.99, 0.999]  # long runs keep the configured schedule


def position_only_noise(shape, generator=None, device=None, dtype=None):
    """A stand-in for the ascent's starting torch.randn that gives every example the same
    noise, so that a batch and its halves start from the same ν."""
    _, seq, hidden = shape
    pattern = torch.sin(torch.arange(seq * hidden, dtype=torch.float32) * 0.37).reshape(1, seq, hidden)
    return pattern.expand(shape).to(device=device, dtype=dtype).clone()


@pytest.mark.parametrize("task,prox,class_weights", [("cls", 1.0, None), ("cls", 1.0, [1.0, 3.0, 0.5]),
                                                     ("reg", 0.0, None)])
def test_memory_efficient_path_gives_the_same_gradients(task, prox, class_weights, monkeypatch):
    """Without dropout and from the same starting noise, the halves give the whole batch's
    objective, logged values and gradients (an odd batch, one half with trailing padding
    that it drops)."""
    import copy
    from dataclasses import replace

    model_a = tiny_model(dropout=0.0)
    model_b = copy.deepcopy(model_a)
    teacher_a, teacher_b = MeanTeacher(model_a), MeanTeacher(model_b)
    with torch.no_grad():  # a teacher that differs from the student, so D has a gradient
        for p in list(teacher_a.model.parameters()) + list(teacher_b.model.parameters()):
            p.mul_(0.9)
    batch = tiny_batch(batch=5)
    batch["attention_mask"][3:, 7:] = 0  # the second half is padded from column 7 on
    batch["input_ids"][batch["attention_mask"] == 0] = 0
    batch["labels"] = torch.tensor([0, 1, 1, 2, 1])
    task_type = get_task_type("classification" if task == "cls" else "regression")
    if task == "reg":
        batch["labels"] = torch.rand(5) * 5
    weights = None if class_weights is None else torch.tensor(class_weights)
    cfg = SmartConfig(mode="full", epsilon=0.05, noise_std=0.01, step_size=0.1)
    monkeypatch.setattr(torch, "randn", position_only_noise)
    standard = batch_objective(model_a, teacher_a, task, task_type, batch, cfg, adv_weight=2.0,
                               prox_weight=prox, loss_weight=0.7, class_weights=weights)
    standard.total.backward()
    calls = []

    def backward(loss):
        calls.append(float(loss.detach()))
        loss.backward()

    efficient = batch_objective(model_b, teacher_b, task, task_type, batch,
                                replace(cfg, memory_efficient=True), adv_weight=2.0,
                                prox_weight=prox, loss_weight=0.7, class_weights=weights,
                                backward=backward)
    assert efficient.backward_done and not standard.backward_done and len(calls) == 2
    for field in ("task_loss", "adv_loss", "adv_divergence", "prox_loss", "teacher_divergence", "perturbation_norm"):
        expected = getattr(standard, field)
        assert (getattr(efficient, field) is None) == (expected is None), field
        if expected is not None:
            assert getattr(efficient, field) == pytest.approx(expected, rel=1e-4), field
    assert float(efficient.total) == pytest.approx(float(standard.total.detach()), rel=1e-5)
    assert sum(calls) == pytest.approx(float(standard.total.detach()), rel=1e-5)
    for (name, a), b in zip(model_a.named_parameters(), model_b.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("memory_efficient", [False, True])
def test_same_dropout_masks_leave_only_the_perturbation_in_r_s(memory_efficient):
    """At a vanishing ε, R_s is the two passes' dropout disagreement with independent masks
    and zero with the clean pass's masks replayed."""
    from dataclasses import replace

    model = tiny_model()
    model.train()
    tiny = SmartConfig(mode="adversarial", epsilon=1e-9, noise_std=1e-9, step_size=1e-9,
                       relative_to_embedding_norm=False, memory_efficient=memory_efficient)
    backward = (lambda loss: loss.backward()) if memory_efficient else None
    batch = tiny_batch()
    adv = {}
    for same in (False, True):
        torch.manual_seed(3)
        adv[same] = batch_objective(model, None, "cls", get_task_type("classification"),
                                    batch, replace(tiny, same_dropout_masks=same),
                                    adv_weight=1.0, prox_weight=0.0, backward=backward).adv_divergence
    after_objective = torch.rand(3)
    assert adv[False] > 1e-4
    assert adv[True] < 1e-9
    if memory_efficient:
        return  # each half draws its own masks and noise
    # the replayed passes draw nothing: the stream ends after the clean pass and the noise
    torch.manual_seed(3)
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"])
        model("cls", inputs_embeds=embeds, attention_mask=batch["attention_mask"])
        torch.randn(embeds.shape)
    assert torch.equal(torch.rand(3), after_objective)


def test_memory_efficient_path_skips_only_a_non_finite_half():
    from dataclasses import replace

    cfg = replace(SmartConfig(mode="adversarial", epsilon=0.05, noise_std=0.01, step_size=0.1),
                  memory_efficient=True)
    for bad_rows, backward_calls in ((slice(2, 4), 1), (slice(0, 4), 0)):
        model = tiny_model()
        batch = tiny_batch()
        batch["labels"] = torch.rand(4)
        batch["labels"][bad_rows] = float("nan")
        calls = []

        def backward(loss):
            calls.append(float(loss.detach()))
            loss.backward()

        losses = batch_objective(model, None, "reg", get_task_type("regression"), batch, cfg,
                                 adv_weight=1.0, prox_weight=0.0, backward=backward)
        assert not torch.isfinite(losses.total)  # the trainer counts the batch as skipped
        assert len(calls) == backward_calls and all(math.isfinite(c) for c in calls)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert len(grads) > 0 if backward_calls else grads == []
        assert all(torch.isfinite(g).all() for g in grads)


def test_memory_efficient_path_runs_each_pass_once_per_half():
    from dataclasses import replace

    model = tiny_model()
    teacher = MeanTeacher(model)
    rows_seen = {"student": [], "teacher": []}
    model.encoder.register_forward_hook(lambda m, i, out: rows_seen["student"].append(out[0].shape[0]))
    teacher.model.encoder.register_forward_hook(lambda m, i, out: rows_seen["teacher"].append(out[0].shape[0]))
    cfg = replace(SmartConfig(mode="full", epsilon=0.01, noise_std=0.01, step_size=0.1),
                  memory_efficient=True)
    batch_objective(model, teacher, "cls", get_task_type("classification"), tiny_batch(batch=5), cfg,
                    adv_weight=1.0, prox_weight=1.0, backward=lambda loss: loss.backward())
    # per half: clean + ascent + perturbed, and the teacher's graph-free forward
    assert rows_seen == {"student": [3, 3, 3, 2, 2, 2], "teacher": [3, 2]}


@pytest.mark.parametrize("norm", ["inf", "l2"])
def test_the_configured_norm_and_ascent_steps_reach_the_adversarial_term(monkeypatch, norm):
    seen = {}
    real = smart.adversarial_loss
    monkeypatch.setattr(smart, "adversarial_loss", lambda *a, **k: (seen.update(k), real(*a, **k))[1])
    batch_objective(tiny_model(), None, "cls", get_task_type("classification"), tiny_batch(),
                    SmartConfig(mode="adversarial", norm=norm, num_steps=3), adv_weight=1.0, prox_weight=0.0)
    assert (seen["norm"], seen["num_steps"]) == (norm, 3)


def test_token_norms_and_the_embedding_scale_by_hand():
    x = torch.tensor([[[-3.0, 1.0], [0.5, -2.0]]])
    assert smart.token_norms(x, "inf").flatten().tolist() == [3.0, 2.0]  # |x|, not the signed max
    assert smart.token_norms(x, "l2").flatten().tolist() == pytest.approx([math.sqrt(10), math.sqrt(4.25)])
    g = torch.tensor([[[-4.0, -1.0], [-0.5, -2.0]]])
    assert smart.normalize_per_token(g, "inf").abs().amax(-1).flatten().tolist() == pytest.approx([1.0, 1.0])
    table = torch.tensor([[3.0, 4.0], [0.0, -1.0]])  # token norms: l2 5 and 1, inf 4 and 1
    assert smart.embedding_scale(table, "l2") == pytest.approx(3.0)  # the mean, not the largest
    assert smart.embedding_scale(table, "inf") == pytest.approx(2.5)


def test_the_side_stream_moves_on_between_batches_and_leaves_the_global_stream_alone():
    from mtsmart.objective import SideStream

    torch.manual_seed(5)
    stream = SideStream(11, torch.device("cpu"))
    global_before = torch.get_rng_state()
    with stream.active():
        first = torch.randn(3)
    saved = stream.state_dict()["cpu"].clone()
    with stream.active():
        second = torch.randn(3)
    assert not torch.equal(first, second), "every batch draws new noise"
    assert not torch.equal(saved, stream.state_dict()["cpu"])
    assert torch.equal(global_before, torch.get_rng_state())


def test_the_teacher_averages_floating_buffers_and_copies_integer_ones():
    student = tiny_model()
    student.heads["cls"].register_buffer("running", torch.zeros(2))
    student.heads["cls"].register_buffer("counter", torch.zeros(2, dtype=torch.long))
    teacher = MeanTeacher(student)
    student.heads["cls"].running.fill_(1.0)
    student.heads["cls"].counter.fill_(7)
    teacher.update(student, beta=0.9)
    assert teacher.model.heads["cls"].running.tolist() == pytest.approx([0.1, 0.1])
    assert teacher.model.heads["cls"].counter.tolist() == [7, 7]


def test_a_teacher_state_round_trips_into_a_fresh_teacher():
    """What a resume does: the saved teacher, not a copy of the restored student."""
    student = tiny_model()
    teacher = MeanTeacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(student, beta=0.5)
    fresh = MeanTeacher(student)
    fresh.load_state_dict(teacher.state_dict())
    for key, value in teacher.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    assert not torch.equal(fresh.state_dict()["encoder.embeddings.word_embeddings.weight"],
                           student.state_dict()["encoder.embeddings.word_embeddings.weight"])


def test_halves_log_the_perturbation_norm_weighted_by_their_real_tokens():
    from mtsmart.objective import BatchLosses, _combined

    def half(norm):
        return BatchLosses(total=torch.tensor(1.0), task_loss=1.0, perturbation_norm=norm)

    # the first half: 3/4 of the examples but, padded, 10 real tokens against 30
    combined = _combined([(0.75, 10, half(1.0)), (0.25, 30, half(3.0))])
    assert combined.perturbation_norm == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)
