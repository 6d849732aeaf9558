"""Export one task of a checkpoint as a standard Hugging Face sequence-classification model
directory, loadable by ``transformers.pipeline("text-classification", model=DIR)`` and any
tool of the ecosystem without mtsmart.

The head maps exactly onto the standard heads: for BERT-style models the encoder's pooler
plus ``classifier`` (what *ForSequenceClassification computes); for RoBERTa-style models
the pooler's dense layer becomes ``classifier.dense`` and the head ``classifier.out_proj``
(dropout is inactive at inference, so the outputs are identical). Weights that map are not
proof: some families' heads compute more than their weights show, so the exported model
is run beside mtsmart's on a probe batch and refused unless both give the same outputs.
Must not import train or cli.
"""

from __future__ import annotations

import os

import torch

from mtsmart.checkpoint import check_apart, folder_replacing, load_checkpoint, training_around, training_within
from mtsmart.errors import CheckpointError
from mtsmart.model import quiet_transformers


def _classifier_state(model, task: str, kind: str) -> dict[str, torch.Tensor]:
    head = model.heads[task].linear
    if kind == "pooler":
        return {"classifier.weight": head.weight, "classifier.bias": head.bias}
    pooler = model.encoder.pooler.dense  # a pooler whose dense layer has that name (checked)
    return {"classifier.dense.weight": pooler.weight, "classifier.dense.bias": pooler.bias,
            "classifier.out_proj.weight": head.weight, "classifier.out_proj.bias": head.bias}


def _leave_out_token_types(tokenizer) -> None:
    """The exported tokenizer stops making token type ids, as mtsmart never gives them to
    an encoder that does not use them (``MultiTaskModel.uses_token_types``); a
    RoBERTa-family checkpoint that ships a BERT tokenizer would otherwise send sentence-B's
    index 1 into a one-row table. ``init_kwargs`` is what save_pretrained writes."""
    names = [name for name in tokenizer.model_input_names if name != "token_type_ids"]
    tokenizer.model_input_names = names
    tokenizer.init_kwargs["model_input_names"] = names


def _check_same_outputs(loaded, task_name: str, hf_model, checkpoint: str) -> None:
    """The exported model, fed all that the exported tokenizer makes, must compute what
    mtsmart's head computes. Longformer's classification model gives the first token global
    attention, which mtsmart's encoder never had; BigBird's applies its activation function
    where the pooler applies tanh. The weights map in both cases; only running the two
    shows it. The probe holds a sentence pair, so sentence-B's type ids are run too."""
    probe = loaded.tokenizer(["a short probe sentence", "and a second probe, a little longer than the first"],
                             ["with its pair", "and another"], padding=True, return_tensors="pt")
    batch = {key: probe[key] for key in ("input_ids", "attention_mask", "token_type_ids") if key in probe}
    loaded.model.eval()
    hf_model.eval()
    with torch.no_grad():
        ours = loaded.model.forward_batch(task_name, batch).reshape(len(batch["input_ids"]), -1)
        theirs = hf_model(**probe).logits
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise CheckpointError(f"{checkpoint}: {type(hf_model).__name__} computes other outputs than mtsmart's "
                              f"{task_name!r} head (up to {float((ours - theirs).abs().max()):.2g} apart on a probe "
                              "batch), so its family does not export as a standard model; export supports BERT- "
                              "and RoBERTa-style encoders")


def check_export_target(checkpoint: str, out_dir: str, overwrite: bool) -> None:
    """The export replaces ``out_dir`` whole: never the checkpoint itself or a folder that
    holds it, and a folder with anything in it only when told to."""
    check_apart(checkpoint, out_dir, "--out")
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f"--out {out_dir}: a file; give a folder for the model")
    # an earlier export may be replaced; a run is hours of training that --overwrite would delete
    training = (training_within(out_dir) if os.path.isdir(out_dir) else None) or training_around(out_dir)
    if training is not None:
        raise CheckpointError(f"--out {out_dir}: a training run or checkpoint, or part of one ({training}), "
                              "which the export would replace whole; export into another folder")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise CheckpointError(f"--out {out_dir}: not empty ({', '.join(sorted(os.listdir(out_dir))[:4])}); "
                              "pass --overwrite to replace it")


def export_task(checkpoint: str, task_name: str, out_dir: str, weights: str = "student",
                overwrite: bool = False) -> str:
    """Write ``out_dir`` atomically; returns it. ``weights``: the checkpoint's student or its
    SMART teacher. Raises CheckpointError for a task the checkpoint lacks, an encoder
    family whose classification head does not match, or an ``out_dir`` it may not replace."""
    from transformers import AutoModelForSequenceClassification

    check_export_target(checkpoint, out_dir, overwrite)
    loaded = load_checkpoint(checkpoint, weights=weights)
    if task_name not in loaded.model.heads:
        raise CheckpointError(f"{checkpoint}: no head for task {task_name!r} "
                              f"(heads: {', '.join(loaded.model.heads)})")
    task = loaded.tasks[task_name]
    encoder = loaded.model.encoder
    if getattr(encoder, "pooler", None) is None:
        raise CheckpointError(f"{checkpoint}: the encoder ({type(encoder).__name__}) has no pooler, so its "
                              "family's *ForSequenceClassification head is not mtsmart's; export needs an "
                              "encoder with a pooler (BERT, RoBERTa, XLM-R, ALBERT, MPNet) trained with "
                              "training.pooling=pooler")
    if loaded.model.pooling != "pooler":
        raise CheckpointError(
            f"{checkpoint}: trained with pooling {loaded.model.pooling!r}; a standard "
            "*ForSequenceClassification head uses the encoder's pooler, so only checkpoints "
            "trained with training.pooling=pooler can be exported")
    config = encoder.config.__class__.from_dict(encoder.config.to_dict())
    is_regression = task.type == "regression"
    config.num_labels = 1 if is_regression else len(task.labels)
    config.problem_type = "regression" if is_regression else "single_label_classification"
    labels = ["score"] if is_regression else list(task.labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    config.classifier_dropout = loaded.model.heads[task_name].dropout.p
    config.architectures = None
    with quiet_transformers():
        hf_model = AutoModelForSequenceClassification.from_config(config)
    prefix = hf_model.base_model_prefix
    classifier_keys = {k for k in hf_model.state_dict() if k.startswith("classifier.")}
    kind = "pooler" if classifier_keys == {"classifier.weight", "classifier.bias"} else "roberta"
    mappable = (kind == "pooler" or ({"classifier.dense.weight", "classifier.out_proj.weight"} <= classifier_keys
                                     and isinstance(getattr(encoder.pooler, "dense", None), torch.nn.Linear)))
    if not mappable:
        raise CheckpointError(f"{checkpoint}: cannot map the head onto {type(hf_model).__name__}'s "
                              "classifier; export supports BERT- and RoBERTa-style encoders")
    state = {f"{prefix}.{k}": v for k, v in encoder.state_dict().items()}
    if kind == "roberta":  # RoBERTa's classification model has no pooler: it is the head's dense
        state = {k: v for k, v in state.items() if ".pooler." not in k}
    state.update(_classifier_state(loaded.model, task_name, kind))
    missing, unexpected = hf_model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise CheckpointError(f"{checkpoint}: export of {task_name!r} left weights unmapped "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    if not loaded.model.uses_token_types():
        _leave_out_token_types(loaded.tokenizer)
    _check_same_outputs(loaded, task_name, hf_model, checkpoint)
    with folder_replacing(out_dir) as tmp:
        # Truncate as mtsmart does, so pipeline(..., truncation=True) sees the same tokens.
        loaded.tokenizer.model_max_length = task.max_length
        with quiet_transformers():
            hf_model.save_pretrained(tmp)
            loaded.tokenizer.save_pretrained(tmp)
    return out_dir
