"""model.py, losses.py and task_types.py on tiny random encoders (BERT and RoBERTa)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtsmart import losses
from mtsmart.model import MultiTaskModel, TaskHead, head_spec
from mtsmart.task_types import TASK_TYPES, TaskType, get_task_type
from mtsmart.tasks import parse_task

SPLITS = {"train": "train.tsv"}
TASKS = [
    parse_task("nli", {"type": "classification", "text_fields": ["a", "b"], "label_field": "label",
                       "labels": ["entailment", "neutral", "contradiction"], "splits": SPLITS}, "t.yaml"),
    parse_task("sts", {"type": "regression", "text_fields": ["a", "b"], "target_field": "score",
                       "splits": SPLITS}, "t.yaml"),
    parse_task("bin", {"type": "classification", "text_fields": ["a"], "label_field": "label",
                       "labels": ["0", "1"], "splits": SPLITS, "head_dropout": 0.0}, "t.yaml"),
]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def encoder_kind(request):
    return request.param


@pytest.fixture(scope="module")
def model(encoder_kind, request):
    directory = request.getfixturevalue("tiny_model_dir" if encoder_kind == "bert" else "tiny_roberta_dir")
    torch.manual_seed(0)
    m = MultiTaskModel.from_pretrained(str(directory), TASKS)
    m.eval()
    return m


def make_batch(model, batch=4, seq=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    vocab = model.encoder.config.vocab_size
    input_ids = torch.randint(5, vocab, (batch, seq), generator=gen)
    lengths = torch.tensor([seq, seq - 3, 4, seq - 1][:batch])
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    input_ids = input_ids * mask  # pad id 0 after each example
    out = {"input_ids": input_ids, "attention_mask": mask}
    if model.encoder.config.type_vocab_size > 1:
        types = torch.zeros_like(input_ids)
        types[:, seq // 2:] = 1
        out["token_type_ids"] = types * mask
    return out


# ----------------------------------------------------------------------------- model


def test_heads_have_the_right_output_shapes(model):
    batch = make_batch(model)
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"])
        assert embeds.shape == (4, 11, model.hidden_size)
        kwargs = dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                      token_type_ids=batch.get("token_type_ids"))
        assert model("nli", **kwargs).shape == (4, 3)
        assert model("bin", **kwargs).shape == (4, 2)
        assert model("sts", **kwargs).shape == (4,)
        assert model.forward_batch("sts", batch).shape == (4,)
    assert set(model.heads) == {"nli", "sts", "bin"}
    assert head_spec(TASKS[0]) == (3, 0.1) and head_spec(TASKS[1]) == (1, 0.1)


def test_embed_is_word_embeddings_only(model):
    ids = make_batch(model)["input_ids"]
    with torch.no_grad():
        words = model.encoder.embeddings.word_embeddings(ids)
        assert torch.equal(model.embed(ids), words)
        full = model.encoder.embeddings(input_ids=ids)
    assert not torch.allclose(model.embed(ids), full)  # no position / type / LayerNorm


def test_inputs_embeds_path_equals_input_ids_path(model):
    batch = make_batch(model)
    mask = batch["attention_mask"]
    extra = {"token_type_ids": batch["token_type_ids"]} if "token_type_ids" in batch else {}
    with torch.no_grad():
        by_ids = model.encoder(input_ids=batch["input_ids"], attention_mask=mask, **extra)
        by_embeds = model.encoder(inputs_embeds=model.embed(batch["input_ids"]), attention_mask=mask, **extra)
        real = mask.bool()
        torch.testing.assert_close(by_embeds.last_hidden_state[real], by_ids.last_hidden_state[real],
                                   rtol=1e-5, atol=1e-5)
        hidden = by_ids.last_hidden_state
        weights = mask.unsqueeze(-1).float()
        pooled_by_mode = {"pooler": by_ids.pooler_output, "cls": hidden[:, 0],
                          "mean": (hidden * weights).sum(1) / weights.sum(1)}
        for mode, pooled in pooled_by_mode.items():
            model.pooling = mode
            for task in ("nli", "sts"):
                expected = model.heads[task](pooled)
                got = model(task, inputs_embeds=model.embed(batch["input_ids"]), attention_mask=mask,
                            token_type_ids=batch.get("token_type_ids"))
                torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5, msg=mode)
        # Positions applied twice (full embeddings fed back in) would change the output.
        twice = model.encoder(inputs_embeds=model.encoder.embeddings(input_ids=batch["input_ids"], **extra),
                              attention_mask=mask, **extra)
        assert not torch.allclose(twice.last_hidden_state[real], by_ids.last_hidden_state[real], atol=1e-3)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(model):
    batch = make_batch(model)
    with torch.no_grad():
        a = model.forward_batch("nli", batch)
        b = model.forward_batch("nli", batch)
        assert torch.equal(a, b)
        model.train()
        try:
            torch.manual_seed(1)
            c = model.forward_batch("nli", batch)
        finally:
            model.eval()
    assert not torch.allclose(a, c)


def test_encoder_dropout_reaches_every_encoder_dropout_and_spares_the_heads(encoder_kind, request):
    directory = request.getfixturevalue("tiny_model_dir" if encoder_kind == "bert" else "tiny_roberta_dir")
    m = MultiTaskModel.from_pretrained(str(directory), TASKS)
    m.set_encoder_dropout(0.0)
    assert m.encoder.config.hidden_dropout_prob == m.encoder.config.attention_probs_dropout_prob == 0.0
    assert m.heads["nli"].dropout.p == TASKS[0].head_dropout > 0
    # With the encoder's dropout off and a head without dropout, train mode is eval mode.
    batch = make_batch(m)
    with torch.no_grad():
        m.eval()
        expected = m.forward_batch("bin", batch)
        m.train()
        torch.manual_seed(1)
        got = m.forward_batch("bin", batch)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    m.set_encoder_dropout(0.5)
    with torch.no_grad():
        torch.manual_seed(1)
        assert not torch.allclose(m.forward_batch("bin", batch), expected, atol=1e-3)


def test_encoder_dropout_reaches_rates_kept_as_plain_floats(tiny_model_dir):
    """Some attention implementations read a float rate at call time, not an nn.Dropout
    (transformers 4.x's SDPA BERT: dropout_prob; DeBERTa before 4.47: drop_prob)."""
    m = MultiTaskModel.from_pretrained(str(tiny_model_dir), TASKS)
    attention = m.encoder.encoder.layer[0].attention.self
    attention.dropout_prob, attention.drop_prob, attention.dropout_layers = 0.1, 0.1, 3
    m.set_encoder_dropout(0.0)
    assert attention.dropout_prob == 0.0 and attention.drop_prob == 0.0
    assert attention.dropout_layers == 3  # not a rate: left alone


def test_pooler_pooling_without_a_pooler_is_one_line():
    from transformers import BertConfig, BertModel

    from mtsmart.errors import ConfigError

    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32)
    with pytest.raises(ConfigError, match=r"training.pooling: 'pooler', but the encoder \(BertModel\) has no pooler"):
        MultiTaskModel(BertModel(config, add_pooling_layer=False), {"t": (2, 0.1)}, "pooler")


def test_a_truncated_encoder_cuts_its_per_layer_settings_and_saves(tmp_path):
    """ModernBERT keeps one layer_types entry per layer: cut to fewer layers, the config
    loaded but refused to save, and a run died at its first checkpoint."""
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "ModernBertConfig"):
        pytest.skip("this transformers has no ModernBERT")
    config = transformers.ModernBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3,
                                           num_attention_heads=2, intermediate_size=64, pad_token_id=0)
    transformers.ModernBertModel(config).save_pretrained(tmp_path / "enc")
    model = MultiTaskModel.from_pretrained(str(tmp_path / "enc"), TASKS, num_hidden_layers=2)
    assert model.encoder.config.num_hidden_layers == 2
    assert all(len(v) == 2 for v in vars(model.encoder.config).values() if isinstance(v, list) and len(v) in (2, 3))
    model.encoder.save_pretrained(tmp_path / "saved")  # raised: num_hidden_layers (2) != len(layer_types) (3)


def test_a_truncated_longformer_cuts_its_attention_windows(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.LongformerConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                           intermediate_size=64, attention_window=[4, 4, 8], max_position_embeddings=80)
    transformers.LongformerModel(config).save_pretrained(tmp_path / "enc")
    model = MultiTaskModel.from_pretrained(str(tmp_path / "enc"), TASKS, num_hidden_layers=2)
    assert model.encoder.config.attention_window == [4, 4]


def test_gradients_reach_the_embedding_table(model):
    batch = make_batch(model)
    model.zero_grad(set_to_none=True)
    out = model.forward_batch("nli", batch)
    losses.classification_loss(out, torch.tensor([0, 1, 2, 0])).backward()
    grad = model.encoder.get_input_embeddings().weight.grad
    assert grad is not None and grad[batch["input_ids"].unique()].abs().sum() > 0
    assert model.heads["sts"].linear.weight.grad is None  # other heads untouched
    model.zero_grad(set_to_none=True)


def test_add_head_and_task_head():
    head = TaskHead(8, 1, 0.0)
    assert head(torch.randn(5, 8)).shape == (5,)
    head3 = TaskHead(8, 3, 0.0)
    assert head3(torch.randn(5, 8)).shape == (5, 3)


def test_a_heads_own_dropout_is_applied_in_training_only():
    """A task's head_dropout (SMART.md: 0.1, 0.3 for MNLI, 0.05 for CoLA) acts on the pooled
    vector; with the encoder's dropout off it is the only randomness left."""
    torch.manual_seed(0)
    head, pooled = TaskHead(8, 3, 0.5), torch.randn(5, 8)
    head.train()
    assert not torch.equal(head(pooled), head(pooled))
    head.eval()
    assert torch.equal(head(pooled), head.linear(pooled))


# ----------------------------------------------------------------------------- losses


def test_classification_loss_is_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 4, generator=gen)
    labels = torch.tensor([0, 3, 1, 2, 2, 0])
    expected = -torch.log_softmax(logits.double(), -1)[torch.arange(6), labels].mean()
    assert losses.classification_loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.equal(losses.classification_loss(logits, labels), F.cross_entropy(logits, labels))


def test_weighted_classification_loss_is_the_weighted_mean_by_hand():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 2, generator=gen)
    labels = torch.tensor([0, 1, 1, 0, 1])
    weights = torch.tensor([3.0, 0.5])
    nll = -torch.log_softmax(logits.double(), -1)[torch.arange(5), labels]
    w = weights.double()[labels]
    expected = (w * nll).sum() / w.sum()
    got = losses.classification_loss(logits, labels, weights)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert got.item() != pytest.approx(losses.classification_loss(logits, labels).item(), rel=1e-3)


def test_balanced_class_weights_match_scikit_learn_and_tolerate_a_missing_class():
    from sklearn.utils.class_weight import compute_class_weight

    targets = np.array([0, 1, 1, 1, 2, 2, 1, 1])
    expected = compute_class_weight("balanced", classes=np.arange(3), y=targets)
    np.testing.assert_allclose(losses.balanced_class_weights(targets, 3), expected)
    # every class then weighs the same in total
    totals = [losses.balanced_class_weights(targets, 3)[c] * np.sum(targets == c) for c in range(3)]
    np.testing.assert_allclose(totals, totals[0])
    np.testing.assert_allclose(losses.balanced_class_weights(np.array([0, 0, 2]), 3), [0.5, 1.0, 1.0])


def test_regression_type_refuses_class_weights():
    with pytest.raises(ValueError, match="regression"):
        get_task_type("regression").loss(torch.zeros(2, 1), torch.zeros(2), torch.ones(2))


def test_regression_loss_is_mse():
    pred = torch.tensor([0.5, 2.0, -1.0])
    targets = torch.tensor([1.0, 2.0, 1.0])
    assert losses.regression_loss(pred, targets).item() == pytest.approx((0.25 + 0 + 4) / 3)
    assert losses.regression_loss(pred[:, None], targets).item() == pytest.approx((0.25 + 4) / 3)


def hand_symmetric_kl(a: np.ndarray, b: np.ndarray) -> float:
    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p, q = softmax(a.astype(np.float64)), softmax(b.astype(np.float64))
    kl_pq = (p * np.log(p / q)).sum(-1)
    kl_qp = (q * np.log(q / p)).sum(-1)
    return float((kl_pq + kl_qp).mean())


def test_symmetric_kl_by_hand():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=gen) * 2, torch.randn(5, 3, generator=gen)
    value = losses.symmetric_kl(a, b)
    assert value.dtype == torch.float32 and value.dim() == 0
    assert value.item() == pytest.approx(hand_symmetric_kl(a.numpy(), b.numpy()), rel=1e-5)
    assert losses.symmetric_kl(b, a).item() == pytest.approx(value.item(), rel=1e-6)
    assert losses.symmetric_kl(a, a).item() == 0.0
    assert losses.symmetric_kl(a, a + 3.0).item() == pytest.approx(0.0, abs=1e-6)  # shift-invariant


def test_symmetric_kl_matches_torch_kl_div():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(7, 4, generator=gen), torch.randn(7, 4, generator=gen)
    lp, lq = F.log_softmax(a, -1), F.log_softmax(b, -1)
    expected = (F.kl_div(lq, lp, log_target=True, reduction="batchmean")
                + F.kl_div(lp, lq, log_target=True, reduction="batchmean"))
    assert losses.symmetric_kl(a, b).item() == pytest.approx(expected.item(), rel=1e-5)


def test_symmetric_kl_stays_finite_in_bf16_with_extreme_logits():
    a = torch.tensor([[80.0, -80.0, 0.0]], dtype=torch.bfloat16)
    b = torch.tensor([[-80.0, 80.0, 0.0]], dtype=torch.bfloat16)
    value = losses.symmetric_kl(a, b)
    assert value.dtype == torch.float32 and torch.isfinite(value) and value.item() > 100


def test_squared_error():
    a = torch.tensor([1.0, 2.0, 3.0, 4.0])
    b = torch.tensor([1.5, 2.0, 1.0, 4.0])
    assert losses.squared_error(a, b).item() == pytest.approx((0.25 + 0 + 4 + 0) / 4)
    assert losses.squared_error(a[:, None], b[:, None]).item() == pytest.approx(4.25 / 4)
    assert losses.squared_error(a.bfloat16(), b.bfloat16()).dtype == torch.float32


# ----------------------------------------------------------------------------- task types


def test_registry_has_both_types_with_every_method():
    assert {"classification", "regression"} <= set(TASK_TYPES)
    for name, tt in TASK_TYPES.items():
        assert isinstance(tt, TaskType) and tt.name == name and get_task_type(name) is tt
        for method in ("output_size", "parse_target", "loss", "divergence", "predict", "format_prediction"):
            assert callable(getattr(tt, method))
        assert set(tt.default_metrics) <= set(tt.metric_table)


def test_classification_type():
    tt = TASK_TYPES["classification"]
    labels = ("neg", "pos", "mixed")
    assert tt.output_size(labels) == 3
    assert tt.parse_target(" pos\n", labels) == 1
    assert tt.parse_target(2, labels) == 2 and tt.parse_target(np.int64(0), labels) == 0
    for bad in ("positive", True, None, 1.0):
        with pytest.raises(ValueError, match="label list"):
            tt.parse_target(bad, labels)
    for bad in (3, -1):  # a hub ClassLabel id out of range
        with pytest.raises(ValueError, match=r"class id -?\d is not one of 0..2"):
            tt.parse_target(bad, labels)
    with pytest.raises(ValueError, match="the hub's -1 marks a hidden label"):
        tt.parse_target(-1, labels)
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]])
    assert tt.predict(logits).tolist() == [1, 0]
    assert tt.format_prediction(np.int64(2), labels) == "mixed"
    targets = torch.tensor([1, 2])
    assert torch.equal(tt.loss(logits, targets), losses.classification_loss(logits, targets))
    assert torch.equal(tt.divergence(logits, logits.flip(0)), losses.symmetric_kl(logits, logits.flip(0)))
    assert tt.target_dtype == torch.long


def test_regression_type():
    tt = TASK_TYPES["regression"]
    assert tt.output_size(None) == 1
    assert tt.parse_target(" 3.25 ", None) == 3.25 and tt.parse_target(2, None) == 2.0
    for bad in ("high", "nan", "inf", "-inf", None, "", "1e39", "-4e38"):  # the last two: inf in float32
        with pytest.raises(ValueError):
            tt.parse_target(bad, None)
    assert tt.parse_target("3e38", None) == 3e38
    out = torch.tensor([0.5, 1.25])
    assert tt.predict(out).tolist() == [0.5, 1.25]
    assert tt.predict(out[:, None].bfloat16()).dtype == np.float32
    assert tt.format_prediction(np.float32(1.5), None) == "1.500000"
    targets = torch.tensor([1.0, 1.0])
    assert torch.equal(tt.loss(out, targets), losses.regression_loss(out, targets))
    assert torch.equal(tt.divergence(out, targets), losses.squared_error(out, targets))
    assert tt.target_dtype == torch.float32


def test_compute_metrics_through_the_type():
    tt = TASK_TYPES["classification"]
    out = tt.compute_metrics(["accuracy", "mcc"], np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0]))
    assert out["accuracy"] == 0.75 and set(out) == {"accuracy", "mcc"}


def test_task_loss_share_is_the_parts_share_of_the_class_weights():
    labels = torch.tensor([0, 1, 1, 0, 1])
    weights = torch.tensor([1.0, 4.0])
    part = labels[:2]
    assert losses.task_loss_share(None, part, labels) == pytest.approx(2 / 5)
    assert losses.task_loss_share(weights, part, labels) == pytest.approx(5 / 14)
    # the parts' weighted losses add up to the whole batch's weighted cross-entropy
    logits = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    whole = losses.classification_loss(logits, labels, weights)
    halves = sum(losses.task_loss_share(weights, labels[s], labels) * losses.classification_loss(logits[s], labels[s], weights)
                 for s in (slice(0, 2), slice(2, 5)))
    torch.testing.assert_close(halves, whole)


_TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
             intermediate_size=64, max_position_embeddings=64)


@pytest.mark.parametrize("family, extra, limit", [
    ("Bert", {}, 64),
    ("Roberta", {"pad_token_id": 1}, 62),  # positions start after the padding index
    ("XLMRoberta", {"pad_token_id": 1}, 62),
    ("MPNet", {}, 62),
    ("DistilBert", {"dim": 32, "n_layers": 1, "n_heads": 2, "hidden_dim": 64}, 64),
    ("Electra", {"embedding_size": 16}, 64),
    ("Deberta", {}, 64),
    ("DebertaV2", {"relative_attention": True, "position_biased_input": False,
                   "pos_att_type": ["p2c", "c2p"]}, None),  # relative positions only: no table
])
def test_position_limit_is_the_longest_input_the_encoder_takes(family, extra, limit):
    import transformers

    from mtsmart.model import fit_tokenizer_to_positions, position_limit

    config = getattr(transformers, f"{family}Config")(**{**_TINY, **extra})
    encoder = getattr(transformers, f"{family}Model")(config).eval()
    assert position_limit(encoder) == limit

    def runs(length: int) -> bool:
        ids = torch.full((1, length), 5)
        try:
            with torch.no_grad():
                encoder(input_ids=ids, attention_mask=torch.ones_like(ids))
            return True
        except (RuntimeError, IndexError):
            return False

    if limit is None:
        assert runs(100)
    else:
        assert runs(limit) and not runs(limit + 1)

    class Tokenizer:
        model_max_length = int(1e30)  # what a tokenizer without a limit says

    tokenizer = Tokenizer()
    fit_tokenizer_to_positions(tokenizer, encoder)
    assert tokenizer.model_max_length == (limit if limit is not None else int(1e30))
    tokenizer.model_max_length = 32  # a tokenizer's own lower limit stays
    fit_tokenizer_to_positions(tokenizer, encoder)
    assert tokenizer.model_max_length == 32


@pytest.mark.parametrize("saved_dtype", [torch.float16, torch.bfloat16])
def test_an_encoder_saved_in_half_precision_trains_in_float32(tiny_model_dir, tmp_path, saved_dtype):
    """transformers 5 loads a checkpoint in the dtype it was saved in (many hub encoders
    are float16 or bfloat16): its outputs met the float32 heads with a dtype error, and
    AdamW would have stepped half-precision weights."""
    import shutil

    from transformers import AutoModel

    directory = tmp_path / "half"
    shutil.copytree(tiny_model_dir, directory)
    AutoModel.from_pretrained(str(tiny_model_dir)).to(saved_dtype).save_pretrained(directory)
    model = MultiTaskModel.from_pretrained(str(directory), TASKS)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    reference = MultiTaskModel.from_pretrained(str(tiny_model_dir), TASKS)
    for (name, ours), theirs in zip(model.encoder.state_dict().items(), reference.encoder.state_dict().values()):
        if ours.is_floating_point():  # the saved weights, upcast exactly
            torch.testing.assert_close(ours, theirs.to(saved_dtype).float(), rtol=0, atol=0, msg=name)
    model.eval()
    assert model.forward_batch("nli", make_batch(model)).dtype == torch.float32


def test_type_ids_reach_only_an_encoder_whose_forward_takes_them(tiny_model_dir):
    """A BERT tokenizer makes token type ids for any encoder it serves (DistilBERT's, in
    transformers 5); an encoder whose forward has no such argument and no **kwargs must not
    be handed them, and BERT's own still reads them."""
    from transformers import BertConfig, BertModel

    class WithoutTypes(BertModel):
        def forward(self, input_ids=None, attention_mask=None, inputs_embeds=None):
            return super().forward(input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds)

    config = BertConfig.from_pretrained(str(tiny_model_dir))
    torch.manual_seed(0)
    plain = MultiTaskModel(BertModel(config), {"t": (2, 0.0)}, pooling="cls").eval()
    without = MultiTaskModel(WithoutTypes(config), {"t": (2, 0.0)}, pooling="cls").eval()
    without.load_state_dict(plain.state_dict())
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3, 11, 3]]), "attention_mask": torch.ones(1, 6, dtype=torch.long),
             "token_type_ids": torch.tensor([[0, 0, 0, 0, 1, 1]])}
    with torch.no_grad():
        assert torch.equal(without.forward_batch("t", batch),
                           plain.forward_batch("t", {**batch, "token_type_ids": torch.zeros(1, 6, dtype=torch.long)}))
        assert not torch.equal(plain.forward_batch("t", batch), without.forward_batch("t", batch))  # BERT's read them
