"""Shared fixtures: a tiny random encoder saved locally, tiny task files, and the path to
../shared (the real model and GLUE files) for integration tests, skipped without it."""

from __future__ import annotations

import os
import string
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SHARED = Path(os.environ.get("MTSMART_SHARED", REPO.parent / "shared"))
SHARED_MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
SHARED_DATA = SHARED / "data"

# tests/ holds shared helpers (tiny_tasks.py) that test files import.
sys.path.insert(0, str(Path(__file__).resolve().parent))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

requires_shared = pytest.mark.skipif(
    not (SHARED_MODEL / "config.json").exists() or not (SHARED_DATA / "glue").is_dir(),
    reason=f"needs the real encoder and GLUE files in {SHARED} (set MTSMART_SHARED)",
)


def _tiny_vocab() -> list[str]:
    # Characters and their continuation pieces: any lower-case English text tokenizes.
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = ["the", "a", "is", "not", "good", "bad", "movie", "cat", "dog", "man", "woman"]
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + [f"##{c}" for c in chars] + words


def build_tiny_encoder(directory: Path, kind: str = "bert", dropout: float = 0.1) -> Path:
    """Save a randomly initialised 2-layer encoder (hidden 32) and a WordPiece tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, RobertaConfig, RobertaModel

    directory.mkdir(parents=True, exist_ok=True)
    vocab = _tiny_vocab()
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    # from_pretrained reads vocab.txt under every transformers version (5.x's constructor
    # takes `vocab=` and silently ignores 4.x's `vocab_file=`, leaving only special tokens)
    tokenizer = BertTokenizerFast.from_pretrained(str(directory), do_lower_case=True)
    assert tokenizer.convert_tokens_to_ids("movie") == vocab.index("movie"), "the tiny vocabulary did not load"
    common = dict(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=160,
                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if kind == "bert":
        model = BertModel(BertConfig(**common))
    else:
        model = RobertaModel(RobertaConfig(**common, pad_token_id=0, bos_token_id=2,
                                           eos_token_id=3, type_vocab_size=1))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def tensorboard_scalars(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run's TensorBoard logs, as TensorBoard shows it: tag → [(step, value)]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta_dir(tmp_path_factory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES
