"""The multi-task model: one shared Hugging Face encoder and one head per task.

The forward pass always starts from word embeddings (``embed``) fed back through
``inputs_embeds``, so SMART's perturbation and plain training take the same path and the
encoder adds position / token-type embeddings and LayerNorm exactly once.
Must not import data loading, the trainer or the CLI.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
from typing import Iterable, Optional

import torch
from torch import nn

from mtsmart.errors import ConfigError
from mtsmart.tasks import TaskDef


@contextlib.contextmanager
def quiet_transformers():
    """Silence load / save reports and their progress bars (e.g. the unused upper layers
    of a truncated encoder): mtsmart prints its own progress."""
    from transformers.utils import logging as hf_logging

    previous = hf_logging.get_verbosity()
    bars_were_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)
        if bars_were_enabled:
            hf_logging.enable_progress_bar()


def _truncated_config(config, num_hidden_layers: int, name_or_path: str):
    """The encoder's config cut to its first ``num_hidden_layers`` layers. Truncation only:
    more layers than the encoder has would be new random ones (transformers' warning about
    them is silenced). Per-layer lists (ModernBERT's layer_types, Longformer's attention_window)
    are cut too: left at the old length, the config loads but refuses to be saved or built."""
    available = getattr(config, "num_hidden_layers", None)
    if available is not None and num_hidden_layers > available:
        raise ConfigError(f"training.num_hidden_layers: {num_hidden_layers}, but the encoder "
                          f"{name_or_path} has {available} layers (valid: 1 to {available})")
    if available is not None:
        for name, value in list(vars(config).items()):
            if ("layer" in name or name == "attention_window") and isinstance(value, list) and len(value) == available:
                setattr(config, name, value[:num_hidden_layers])
    config.num_hidden_layers = num_hidden_layers
    return config


def _encoder_load_error(name_or_path: str, err: Exception) -> ConfigError:
    """One line for a failed ``from_pretrained``: transformers reports a missing local
    folder, an unreachable hub and a broken model each as a multi-line traceback."""
    first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
    if os.path.isdir(name_or_path):
        return ConfigError(f"cannot load the encoder in {name_or_path}: {first}")
    return ConfigError(f"cannot load the encoder {name_or_path!r}: no such local directory, and "
                       f"from the Hugging Face hub: {first}")


# What transformers raises for a missing folder, an unreachable hub or a broken model.
LOAD_ERRORS = (OSError, ValueError, KeyError)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The encoder's tokenizer; a source that cannot load stops with one line."""
    from transformers import AutoTokenizer

    try:
        with quiet_transformers():
            return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as err:
        raise _encoder_load_error(name_or_path, err) from None


def position_limit(encoder: nn.Module) -> Optional[int]:
    """The most tokens the encoder's learned position table covers; None when it has none
    (relative or rotary positions: DeBERTa v2/v3, ModernBERT). RoBERTa-style tables
    (XLM-R, MPNet, Longformer) number positions from padding_idx + 1, so those rows are
    out of reach."""
    embeddings = getattr(encoder, "embeddings", None)
    table = getattr(embeddings, "position_embeddings", None)
    if not isinstance(table, nn.Embedding):
        return None
    padding_idx = getattr(embeddings, "padding_idx", None)
    return table.num_embeddings - (padding_idx + 1 if isinstance(padding_idx, int) else 0)


def encoder_skeleton(name_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """A saved encoder's modules built from its config on the meta device: its shapes
    (``position_limit``) without reading or allocating its weights."""
    from transformers import AutoConfig, AutoModel

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
            with torch.device("meta"):
                return AutoModel.from_config(config, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as err:
        raise _encoder_load_error(name_or_path, err) from None


def fit_tokenizer_to_positions(tokenizer, encoder: nn.Module) -> None:
    """Lower the tokenizer's ``model_max_length`` to what the encoder's positions cover.
    Many tokenizers say no limit (1e30), and a task's max_length beyond the position table
    then crashed at the first long batch instead of being refused up front
    (data.load_tokenized checks max_length against this)."""
    limit = position_limit(encoder)
    if limit is not None and tokenizer.model_max_length > limit:
        tokenizer.model_max_length = limit


def vocabulary_problem(tokenizer, encoder: nn.Module) -> Optional[str]:
    """Why the tokenizer cannot feed the encoder: ids beyond its word-embedding table (a
    tokenizer with added tokens whose encoder was not resized, or another model's
    tokenizer), which crash the first batch that holds one with an IndexError deep in
    torch. None when every id has a row."""
    table = encoder.get_input_embeddings()
    rows = getattr(table, "num_embeddings", None)
    top = max(tokenizer.get_vocab().values(), default=-1)
    if rows is None or top < rows:
        return None
    return (f"the tokenizer makes token ids up to {top}, but the encoder's embedding table has {rows} rows, "
            "so the two do not belong together; after adding tokens to a tokenizer, resize the encoder "
            "(model.resize_token_embeddings(len(tokenizer))) and save both")


@functools.lru_cache(maxsize=None)
def _takes_token_types(encoder_class: type) -> bool:
    """Whether the forward names token_type_ids or takes any keyword (a decorator that
    hides the real signature must not cost BERT its segment embeddings)."""
    parameters = inspect.signature(encoder_class.forward).parameters.values()
    return any(p.name == "token_type_ids" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class TaskHead(nn.Module):
    """Dropout then a linear layer on the pooled representation (see ``pooling``)."""

    def __init__(self, hidden_size: int, output_size: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, output_size)
        self.output_size = output_size

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """[batch, hidden] → [batch, output_size], or [batch] for a scalar head."""
        out = self.linear(self.dropout(pooled))
        return out.squeeze(-1) if self.output_size == 1 else out


def head_spec(task: TaskDef) -> tuple[int, float]:
    return task.task_type.output_size(task.labels), task.head_dropout


POOLINGS = ("cls", "mean", "pooler")


# Config attributes that hold an encoder's dropout rates across Hugging Face families
# (BERT / RoBERTa / ELECTRA, DistilBERT, DeBERTa, XLM, ...); classifier_dropout is a
# head's and stays.
ENCODER_DROPOUT_CONFIG_KEYS = (
    "hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout",
    "activation_dropout", "hidden_dropout", "attention_dropout_prob", "pooler_dropout",
)


class MultiTaskModel(nn.Module):
    """Shared encoder + ``nn.ModuleDict`` of heads keyed by task name.

    ``pooling`` turns the encoder's output into one vector per example: ``cls`` the
    first token's final hidden state, ``mean`` the mean over real tokens, ``pooler`` the
    encoder's own pooler (BERT's dense + tanh on the first token, which is what
    *ForSequenceClassification uses, and what `mtsmart export` maps onto)."""

    def __init__(self, encoder: nn.Module, head_specs: dict[str, tuple[int, float]],
                 pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if pooling == "pooler" and getattr(encoder, "pooler", None) is None:
            raise ConfigError(f"training.pooling: 'pooler', but the encoder ({type(encoder).__name__}) "
                              "has no pooler (valid here: cls, mean)")
        self.pooling = pooling
        # Weights train in float32 whatever dtype the encoder was saved in: transformers 5
        # loads a float16 / bfloat16 checkpoint as such, and its outputs then met the float32
        # heads with a dtype error (mixed precision is autocast's job, training.precision).
        self.encoder = encoder.float()
        self.heads = nn.ModuleDict()
        for name, (size, dropout) in head_specs.items():
            self.add_head(name, size, dropout)

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    def add_head(self, name: str, output_size: int, dropout: float) -> None:
        self.heads[name] = TaskHead(self.hidden_size, output_size, dropout)
        # New heads follow the encoder's own initialiser, as a *ForSequenceClassification
        # head would, so that a fresh head starts at the scale the encoder expects.
        init = getattr(self.encoder, "_init_weights", None)
        if init is not None:
            self.heads[name].apply(init)
        device = next(self.encoder.parameters()).device
        self.heads[name].to(device)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tasks: Iterable[TaskDef],
                        num_hidden_layers: Optional[int] = None,
                        trust_remote_code: bool = False, pooling: str = "cls") -> "MultiTaskModel":
        from transformers import AutoConfig, AutoModel

        kwargs = {"trust_remote_code": trust_remote_code}
        try:
            with quiet_transformers():
                if num_hidden_layers is not None:
                    kwargs["config"] = _truncated_config(AutoConfig.from_pretrained(name_or_path, **kwargs),
                                                         num_hidden_layers, name_or_path)
                encoder = AutoModel.from_pretrained(name_or_path, **kwargs)
        except LOAD_ERRORS as err:
            raise _encoder_load_error(name_or_path, err) from None
        return cls(encoder, {t.name: head_spec(t) for t in tasks}, pooling)

    @classmethod
    def from_config(cls, config, tasks: Iterable[TaskDef], pooling: str = "cls") -> "MultiTaskModel":
        from transformers import AutoModel

        return cls(AutoModel.from_config(config), {t.name: head_spec(t) for t in tasks}, pooling)

    def set_encoder_dropout(self, p: float) -> None:
        """Every dropout of the encoder (embeddings, attention, feed-forward) to ``p``,
        heads untouched. Modules hold their own rate and some attention implementations
        read it from the config at call time, so both change; the saved config then
        reloads with the same rate."""
        for module in self.encoder.modules():
            if isinstance(module, nn.Dropout):
                module.p = p
            # Others keep the rate as a plain float, read at call time (transformers 4.x's SDPA
            # attention: dropout_prob; DeBERTa's StableDropout before 4.47: drop_prob): missed,
            # their dropout stayed on at p = 0.
            for name, value in list(vars(module).items()):
                if ("dropout" in name or name == "drop_prob") and isinstance(value, float):
                    setattr(module, name, p)
        config = self.encoder.config
        for name in ENCODER_DROPOUT_CONFIG_KEYS:
            value = getattr(config, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool):  # 0 may be an int
                setattr(config, name, p)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each encoder layer's activations in the backward pass instead of
        keeping them. Non-reentrant checkpointing, so gradients reach ``inputs_embeds``
        (SMART's ascent needs them) and each layer's dropout masks are replayed from the
        saved generator state: the gradients are those of the uncheckpointed pass."""
        encoder = self.encoder
        if not getattr(encoder, "supports_gradient_checkpointing", False):
            raise ConfigError(f"training.gradient_checkpointing: the encoder "
                              f"({type(encoder).__name__}) does not support it; set it to false")
        if getattr(encoder.config, "use_cache", False):
            encoder.config.use_cache = False  # an encoder keeps no cache; said now, not warned per step
        enable = getattr(encoder, "activation_checkpointing_enable", None)  # transformers >= 5.x
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Word embeddings only (no position / type embeddings, no LayerNorm):
        [batch, seq] → [batch, seq, hidden]."""
        return self.encoder.get_input_embeddings()(input_ids)

    def uses_token_types(self) -> bool:
        """Whether the encoder is given a tokenizer's token type ids. Not those with a
        single token type (RoBERTa): sentence-B's index 1 does not exist in their
        type-embedding table. Nor those whose forward has no such argument and no
        **kwargs, though a BERT tokenizer makes them for any encoder it serves."""
        return getattr(self.encoder.config, "type_vocab_size", 2) > 1 and _takes_token_types(type(self.encoder))

    def forward(self, task: str, *, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Task ``task``'s outputs from word embeddings [batch, seq, hidden]:
        logits [batch, num_labels] for classification, scores [batch] for regression."""
        kwargs = {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask}
        if token_type_ids is not None and self.uses_token_types():
            kwargs["token_type_ids"] = token_type_ids
        out = self.encoder(**kwargs)
        if self.pooling == "pooler":
            pooled = out.pooler_output
        elif self.pooling == "mean":
            mask = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        else:
            pooled = out.last_hidden_state[:, 0]
        return self.heads[task](pooled)

    def forward_batch(self, task: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Convenience for evaluation: embed and forward a collated batch."""
        return self(task, inputs_embeds=self.embed(batch["input_ids"]),
                    attention_mask=batch["attention_mask"],
                    token_type_ids=batch.get("token_type_ids"))
