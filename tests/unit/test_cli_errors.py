"""Bad user input ends as exit code 2 and exactly one line on stderr, never a traceback.

Most cases call ``mtsmart.cli.main`` in-process (fast); one runs ``python -m mtsmart`` as
a real subprocess to check the process exit code and everything it writes to stderr."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtsmart.cli import main

REPO = Path(__file__).resolve().parents[2]

GOOD_TRAIN = "sentence\tlabel\nthe cat is good\t1\nthe dog is bad\t0\na movie\t1\n"


def task_yaml(**task_changes):
    task = {
        "type": "classification",
        "text_fields": ["sentence"],
        "label_field": "label",
        "labels": ["0", "1"],
        "splits": {"train": {"path": "train.tsv", "quoting": "none"},
                   "dev": {"path": "dev.tsv", "quoting": "none"}},
    }
    task.update(task_changes)
    return {"tasks": {"tiny": task}, "training": {"batch_size": 2, "max_steps": 1}}


@pytest.fixture
def workdir(tmp_path):
    (tmp_path / "train.tsv").write_text(GOOD_TRAIN, encoding="utf-8")
    (tmp_path / "dev.tsv").write_text(GOOD_TRAIN, encoding="utf-8")
    return tmp_path


def write(workdir, data, name="tasks.yaml"):
    path = workdir / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def argv(workdir, task_file, tiny_model_dir, *extra, overrides=()):
    return ["train", str(task_file), *overrides, "--output", str(workdir / "out"), "--encoder", str(tiny_model_dir),
            "--data-dir", str(workdir), "--cache-dir", str(workdir / "cache"), "--quiet", *extra]


def run_main(args, capsys) -> tuple[int, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.err


def assert_one_line(code, err, *parts):
    assert code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("mtsmart: error: ")
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def test_unknown_yaml_key(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml(lables=["0", "1"]))
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    assert_one_line(code, err, str(task_file), "'tiny'", "'lables'")
    assert not (workdir / "out").exists()  # nothing was started


def test_unknown_training_key(workdir, tiny_model_dir, capsys):
    data = task_yaml()
    data["training"]["batchsize"] = 4
    task_file = write(workdir, data)
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    assert_one_line(code, err, str(task_file), "'batchsize'", "batch_size")


def test_bad_override(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, overrides=["training.optim.lr"]), capsys)
    assert_one_line(code, err, "'training.optim.lr'", "KEY=VALUE")


def test_missing_task_file(workdir, tiny_model_dir, capsys):
    code, err = run_main(argv(workdir, workdir / "none.yaml", tiny_model_dir), capsys)
    assert_one_line(code, err, "none.yaml", "not found")


def test_missing_data_file(workdir, tiny_model_dir, capsys):
    data = task_yaml()
    data["tasks"]["tiny"]["splits"]["dev"] = {"path": "missing.tsv"}
    task_file = write(workdir, data)
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    # the folder came from neither --data-dir nor $MTSMART_DATA_DIR: all that set it are named
    assert_one_line(code, err, str(workdir / "missing.tsv"), "'tiny'", "'dev'", f"data folder {workdir},",
                    "the task file's data_dir")


def test_label_outside_the_list(workdir, tiny_model_dir, capsys):
    (workdir / "train.tsv").write_text(GOOD_TRAIN + "the man\t7\n", encoding="utf-8")
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    assert_one_line(code, err, f"{workdir / 'train.tsv'} line 5", "'7'", "'tiny'")


def test_empty_split(workdir, tiny_model_dir, capsys):
    (workdir / "dev.tsv").write_text("sentence\tlabel\n", encoding="utf-8")
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    assert_one_line(code, err, str(workdir / "dev.tsv"), "'dev'", "no rows")


def test_non_numeric_regression_target(workdir, tiny_model_dir, capsys):
    (workdir / "sts.tsv").write_text("sentence\tscore\nthe cat\t1.0\nthe dog\tabout two\n", encoding="utf-8")
    data = {"tasks": {"sts": {"type": "regression", "text_fields": ["sentence"], "target_field": "score",
                              "splits": {"train": "sts.tsv", "dev": "sts.tsv"}}},
            "training": {"batch_size": 2, "max_steps": 1}}
    task_file = write(workdir, data)
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    assert_one_line(code, err, f"{workdir / 'sts.tsv'} line 3", "'about two'", "'sts'", "'score'")


def test_override_with_bad_value(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir,
                              overrides=["tasks.tiny.max_length=long"]), capsys)
    assert_one_line(code, err, str(task_file), "'tiny'", "'max_length'")


def test_overrides_after_the_flags_are_applied_too(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "tasks.tiny.class_weights=[1]"), capsys)
    assert_one_line(code, err, str(task_file), "'tiny'", "'class_weights'")


def test_a_bad_value_from_the_command_line_names_where_it_was_set(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--smart", "full", "--epsilon", "-1"), capsys)
    assert_one_line(code, err, "training.smart.epsilon", ">= 0", "(set by --epsilon)")
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "smart.teacher_beta=2"), capsys)
    assert_one_line(code, err, "teacher_beta", "[0, 1]", "(set by smart.teacher_beta=2)")
    code, err = run_main(argv(workdir, task_file, tiny_model_dir,
                              overrides=["tasks.tiny.max_length=long"]), capsys)
    assert_one_line(code, err, "'tiny'", "'max_length'", "(set by tasks.tiny.max_length=long)")
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "tasks.tiny.smart.epsilon=-1"), capsys)
    assert_one_line(code, err, "'tiny'", "smart.epsilon", "(set by tasks.tiny.smart.epsilon=-1)")


def test_a_bad_value_in_the_file_blames_no_flag(workdir, tiny_model_dir, capsys):
    data = task_yaml()
    data["training"]["smart"] = {"epsilon": -1}
    task_file = write(workdir, data)
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--lr", "1e-4"), capsys)
    assert_one_line(code, err, str(task_file), "training.smart.epsilon", ">= 0")
    assert "set by" not in err
    # The complaint lists the valid per-task keys, epsilon among them: the override that
    # set epsilon correctly is not the one to blame.
    data = task_yaml(smart={"bogus": 1})
    task_file = write(workdir, data)
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "tasks.tiny.smart.epsilon=0.1"), capsys)
    assert_one_line(code, err, str(task_file), "'bogus'", "epsilon")
    assert "set by" not in err


def test_encoder_dropout_outside_its_range(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--encoder-dropout", "1.5"), capsys)
    assert_one_line(code, err, "encoder_dropout", "[0, 1)", "1.5")
    assert not (workdir / "out").exists()


def test_a_stray_word_after_the_flags_is_an_error(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    with pytest.raises(SystemExit) as exit_info:
        main(argv(workdir, task_file, tiny_model_dir, "tasks.yaml"))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "unrecognized arguments: tasks.yaml" in err
    assert not (workdir / "out").exists()


def test_unknown_tasks_name(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--tasks", "tiny,rte"), capsys)
    assert_one_line(code, err, "--tasks", "'rte'", "tiny")


def test_non_empty_output_dir_without_overwrite(workdir, tiny_model_dir, capsys):
    (workdir / "out").mkdir()
    (workdir / "out" / "keep.txt").write_text("earlier run", encoding="utf-8")
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    assert_one_line(code, err, str(workdir / "out"), "--overwrite")
    assert (workdir / "out" / "keep.txt").read_text(encoding="utf-8") == "earlier run"


def test_resume_without_checkpoint(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--resume"), capsys)
    assert_one_line(code, err, str(workdir / "out"), "resume")


def test_select_metric_of_unknown_task(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--select-metric", "rte/accuracy"), capsys)
    assert_one_line(code, err, "select_metric", "'rte/accuracy'", "tiny/accuracy")


@pytest.mark.parametrize("case", ["run_folder", "checkpoint", "missing_dir", "missing_dir_slash", "no_config",
                                  "a_file", "hub_name"])
def test_an_encoder_that_cannot_load(workdir, capsys, case):
    run = workdir / "run"
    for checkpoint in ("best", "last"):
        (run / checkpoint).mkdir(parents=True)
        (run / checkpoint / "meta.json").write_text("{}")
    encoder, expected = {
        "run_folder": (run, ["run folder", str(run / "best"), str(run / "last")]),
        "checkpoint": (run / "best", ["checkpoint", "mtsmart finetune"]),
        "missing_dir": (workdir / "nope", ["no such directory", "config.json"]),
        "missing_dir_slash": ("nope/", ["no such directory"]),  # a hub name never ends in '/'
        "no_config": (workdir, ["no config.json"]),
        "a_file": (workdir / "train.tsv", ["a file"]),
        "hub_name": ("nobody/no-such-encoder", ["'nobody/no-such-encoder'", "Hugging Face hub"]),  # offline in tests
    }[case]
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, encoder), capsys)
    assert_one_line(code, err, str(encoder), *expected)
    assert not (workdir / "out").exists()  # nothing written, not even the folder


def test_adapt_refuses_a_start_that_is_no_encoder_or_checkpoint(workdir, capsys):
    run = workdir / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "meta.json").write_text("{}")
    task_file = write(workdir, task_yaml())
    code, err = run_main(["adapt", f"mt={run}", "--task", "tiny", "--task-defs", str(task_file),
                          "--train-sizes", "2", "--output", str(workdir / "adapt")], capsys)
    assert_one_line(code, err, "START mt", str(run), "run folder", str(run / "best"))


def grow_tokenizer(encoder_dir: Path) -> None:
    """Add two words to the folder's tokenizer and leave its encoder's embeddings as they were."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(encoder_dir))
    tokenizer.add_tokens(["kitten", "puppy"])
    tokenizer.save_pretrained(str(encoder_dir))


def test_a_tokenizer_with_ids_beyond_the_encoders_embeddings_is_named(workdir, tiny_model_dir, capsys):
    """Tokens added to a tokenizer without resizing its encoder made an IndexError deep in
    torch at the first batch that held one; the mismatch is now named before anything runs,
    for an encoder to train, a START of adapt and a checkpoint."""
    import shutil

    rows = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    (workdir / "train.tsv").write_text(GOOD_TRAIN + "the kitten\t1\n", encoding="utf-8")
    task_file = write(workdir, task_yaml())
    grown = workdir / "grown"
    shutil.copytree(tiny_model_dir, grown)
    grow_tokenizer(grown)
    problem = [f"token ids up to {rows}, but the encoder's embedding table has {rows} rows",
               "resize_token_embeddings"]
    code, err = run_main(argv(workdir, task_file, grown), capsys)
    assert_one_line(code, err, f"training.encoder {grown}: the tokenizer", *problem)
    assert not (workdir / "out").exists()
    code, err = run_main(["adapt", f"raw={grown}", "--task", "tiny", "--task-defs", str(task_file),
                          "--train-sizes", "2", "--output", str(workdir / "adapt")], capsys)
    assert_one_line(code, err, f"START raw's encoder ({grown})", *problem)

    assert run_main(argv(workdir, task_file, tiny_model_dir), capsys)[0] == 0
    encoder_dir = workdir / "out" / "best" / "encoder"
    grow_tokenizer(encoder_dir)
    code, err = run_main(["evaluate", str(workdir / "out" / "best"), "--data-dir", str(workdir)], capsys)
    assert_one_line(code, err, f"{encoder_dir}: the tokenizer", *problem)


def test_an_encoder_family_whose_forward_takes_no_padded_batch_is_named(workdir, tiny_model_dir, capsys):
    """Nystromformer's forward needs every input padded to one fixed length; mtsmart pads a
    batch to its longest input, and the run stopped with a traceback at its first step. One
    forward of two training examples finds that before anything is written."""
    import shutil

    from transformers import NystromformerConfig, NystromformerModel

    encoder = workdir / "nystromformer"
    shutil.copytree(tiny_model_dir, encoder)
    (encoder / "model.safetensors").unlink()
    vocab = json.loads((tiny_model_dir / "config.json").read_text())["vocab_size"]
    NystromformerModel(NystromformerConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, intermediate_size=64, num_landmarks=4,
                                           segment_means_seq_len=16, max_position_embeddings=64)).save_pretrained(encoder)
    capsys.readouterr()
    task_file = write(workdir, task_yaml(max_length=16))
    code, err = run_main(argv(workdir, task_file, encoder), capsys)
    assert_one_line(code, err, f"training.encoder {encoder}: its forward fails on a batch of two training examples",
                    "(NystromformerModel: ", "does not train with mtsmart")
    assert not (workdir / "out").exists()


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "x.yaml", "--sampler", "random"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "--sampler" in err and "Traceback" not in err


def test_subprocess_label_error(workdir, tiny_model_dir):
    """The real process: exit status 2 and one stderr line, model loading included."""
    (workdir / "train.tsv").write_text(GOOD_TRAIN + "the man\tmaybe\n", encoding="utf-8")
    task_file = write(workdir, task_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "mtsmart", *argv(workdir, task_file, tiny_model_dir)],
                          capture_output=True, text=True, env=env, cwd=str(workdir), timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert f"{workdir / 'train.tsv'} line 5" in proc.stderr and "'maybe'" in proc.stderr


def test_notes_come_from_the_first_process_only(workdir, tiny_model_dir):
    """Under torchrun every process finds the same notes; they were printed once per process."""
    task_file = write(workdir, task_yaml())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    notes = {}
    for rank in ("0", "1"):
        proc = subprocess.run([sys.executable, "-m", "mtsmart", *argv(workdir, task_file, tiny_model_dir, "--dry-run",
                                                                      "--adv-weight", "0.5")],
                              capture_output=True, text=True, env={**env, "RANK": rank}, cwd=str(workdir), timeout=120)
        assert proc.returncode == 0, proc.stderr
        notes[rank] = [line for line in proc.stderr.splitlines() if line.startswith("mtsmart: note:")]
    assert any("--adv-weight" in line for line in notes["0"]) and notes["1"] == []


@pytest.mark.parametrize("given, setting", [
    (["--seed", "3"], "training.seed"),
    (["--max-steps", "50"], "training.max_steps"),
    (["training.eval_every=10"], "training.eval_every"),
    (["patience=2"], "training.patience"),
    (["--keep-last", "2"], "training.keep_last"),
])
def test_adapt_refuses_a_setting_it_sets_for_each_run_itself(workdir, tiny_model_dir, capsys, given, setting):
    task_file = write(workdir, task_yaml())
    code, err = run_main(["adapt", f"raw={tiny_model_dir}", "--task", "tiny", "--task-defs", str(task_file),
                          "--train-sizes", "2", "--output", str(workdir / "adapt"), *given], capsys)
    assert_one_line(code, err, given[0].split("=")[0], setting, "each run")
    assert not (workdir / "adapt").exists()


def test_adapt_takes_epochs_though_it_sets_max_steps_itself(workdir, tiny_model_dir, capsys):
    """--epochs is how adapt is told how long each run trains: that the flag also clears
    max_steps must not get it refused as a setting adapt makes for each run (here the
    repeated seed is what stops it, before anything trains)."""
    task_file = write(workdir, task_yaml())
    code, err = run_main(["adapt", f"raw={tiny_model_dir}", "--task", "tiny", "--task-defs", str(task_file),
                          "--train-sizes", "2", "--output", str(workdir / "adapt"), "--epochs", "2",
                          "--seeds", "1,1"], capsys)
    assert_one_line(code, err, "--seeds: 1 is given twice")

@pytest.mark.parametrize("given, says", [
    (["--seeds", "1,1"], ["--seeds: 1 is given twice"]),
    (["--seeds", "-1"], ["--seeds", "[0, 2**32)"]),
    (["--seeds", str(2**64)], ["--seeds", "[0, 2**32)"]),
    (["--seeds", str(2**32)], ["--seeds", "[0, 2**32)"]),  # the first seed numpy refuses
    (["raw={enc}"], ["START raw", "given twice"]),
    (["raw={task_file}"], ["START raw", "given twice"]),
    (["../x={enc}"], ["START ../x=", "'../x' is no label"]),
    (["={enc}"], ["START =", "'' is no label"]),
])
def test_adapt_refuses_seeds_and_labels_that_would_pose_as_seeds(workdir, tiny_model_dir, capsys, given, says):
    """A repeated seed or label would put the same run (or two start points) in one table
    cell as a spread of seeds; seeds outside numpy's range were a traceback."""
    task_file = write(workdir, task_yaml())
    given = [g.format(enc=tiny_model_dir, task_file=task_file) for g in given]
    starts = [g for g in given if "=" in g]
    flags = [g for g in given if "=" not in g]
    code, err = run_main(["adapt", f"raw={tiny_model_dir}", *starts, "--task", "tiny",
                          "--task-defs", str(task_file), "--train-sizes", "2",
                          "--output", str(workdir / "adapt"), *flags], capsys)
    assert_one_line(code, err, *says)


@pytest.mark.parametrize("sizes", ["0", "1.5", "abc"])
def test_adapt_checks_its_train_sizes_before_any_data_loads(workdir, tiny_model_dir, capsys, sizes):
    task_file = write(workdir, task_yaml())
    code, err = run_main(["adapt", f"raw={tiny_model_dir}", "--task", "tiny", "--task-defs", str(task_file),
                          "--train-sizes", sizes, "--output", str(workdir / "adapt")], capsys)
    assert_one_line(code, err, f"--train-sizes: {sizes!r} is neither a fraction in (0, 1] nor a positive count")
    assert not (workdir / "adapt").exists()  # an empty folder was left behind


@pytest.mark.parametrize("setting, says", [("training.optim.lr=-1", "training.optim.lr"),
                                            ("batch_size=0", "training.batch_size"),
                                            ("tasks.tiny.max_length=4", "'max_length'")])
def test_adapt_reads_a_key_value_before_the_flags_as_an_override(workdir, tiny_model_dir, capsys, setting, says):
    """argparse would hand it to START; the error shows it reached the settings instead."""
    task_file = write(workdir, task_yaml())
    code, err = run_main(["adapt", f"raw={tiny_model_dir}", setting, "--task", "tiny",
                          "--task-defs", str(task_file), "--train-sizes", "2",
                          "--output", str(workdir / "adapt")], capsys)
    assert_one_line(code, err, says, setting)
    assert "START" not in err


def test_adapt_names_a_setting_it_leaves_unused(workdir, tiny_model_dir, capsys, caplog):
    """The notes run in adapt as in train (here before --seeds is refused, so nothing trains)."""
    task_file = write(workdir, task_yaml())
    with caplog.at_level("WARNING"):
        code, err = run_main(["adapt", f"raw={tiny_model_dir}", "--task", "tiny", "--task-defs", str(task_file),
                              "--train-sizes", "2", "--output", str(workdir / "adapt"), "--smart", "off",
                              "--adv-weight", "5", "--seeds", "1,1"], capsys)
    assert_one_line(code, err, "--seeds: 1 is given twice")
    assert any("--adv-weight does nothing" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("layers, expected", [("3", ["has 2 layers", "valid: 1 to 2"]), ("0", ["must be >= 1"])])
def test_num_hidden_layers_only_truncates(workdir, tiny_model_dir, capsys, layers, expected):
    """More layers than the encoder has would be new random layers; refused, as is 0."""
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--num-hidden-layers", layers), capsys)
    assert_one_line(code, err, "num_hidden_layers", *expected)
    assert not (workdir / "out").exists() or not any((workdir / "out").iterdir())


def test_an_override_of_a_task_the_file_lacks_names_the_tasks(workdir, tiny_model_dir, capsys):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, overrides=["tasks.tinyy.max_length=64"]), capsys)
    assert_one_line(code, err, "tasks.tinyy.max_length=64", "no task 'tinyy'", "tasks: tiny")


def test_an_encoder_given_as_a_checkpoint_is_called_an_encoder(tiny_model_dir, capsys):
    code, err = run_main(["evaluate", str(tiny_model_dir)], capsys)
    assert_one_line(code, err, str(tiny_model_dir), "an encoder, not an mtsmart checkpoint", "--encoder")


def test_overwrite_keeps_the_old_run_when_the_new_one_cannot_start(workdir, tiny_model_dir, capsys):
    """--overwrite clears the folder only once every setting, the encoder and the data are
    known to be good: a bad label leaves the previous run as it was."""
    task_file = write(workdir, task_yaml())
    out = workdir / "out"
    out.mkdir()
    (out / "results.json").write_text("the previous run")
    bad = write(workdir, task_yaml(labels=["0", "2"]), "bad.yaml")
    code, err = run_main(argv(workdir, bad, tiny_model_dir, "--overwrite"), capsys)
    assert_one_line(code, err, "label '1' is not in the label list")
    assert (out / "results.json").read_text() == "the previous run"
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--overwrite", "--resume"), capsys)
    assert_one_line(code, err, "--resume", "--overwrite")


def test_max_length_beyond_the_encoders_positions_fails_before_anything_runs(workdir, tiny_model_dir, capsys):
    """The dry run catches it too: the run would crash at the first long batch."""
    import json
    import shutil

    encoder = workdir / "encoder"  # the tiny encoder, its tokenizer told its positions (64)
    shutil.copytree(tiny_model_dir, encoder)
    config = json.loads((encoder / "tokenizer_config.json").read_text())
    (encoder / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 64}))
    limit = 64
    task_file = write(workdir, task_yaml(max_length=limit + 1))
    for extra in (["--dry-run"], []):
        code, err = run_main(argv(workdir, task_file, encoder, *extra), capsys)
        assert_one_line(code, err, "'tiny'", "max_length", f"at most {limit}")
    assert not (workdir / "out").exists()


def test_max_length_beyond_the_position_table_fails_when_the_tokenizer_names_no_limit(workdir, tiny_model_dir,
                                                                                       capsys):
    """The tiny tokenizer, like many, says no limit (1e30); its encoder has 160 positions.
    The run crashed at the first batch longer than that, deep inside the encoder."""
    task_file = write(workdir, task_yaml(max_length=161))
    for extra in (["--dry-run"], []):
        code, err = run_main(argv(workdir, task_file, tiny_model_dir, *extra), capsys)
        assert_one_line(code, err, "'tiny'", "max_length", "at most 160")
    assert not (workdir / "out").exists()


def test_adapt_checks_every_starts_positions_before_the_first_run(workdir, tiny_model_dir, capsys):
    """A later start with a shorter position table stopped the sweep only once the
    earlier starts had trained: hours into a real one."""
    import shutil

    from transformers import AutoConfig, AutoModel

    short = workdir / "short"  # the tiny encoder with 64 positions instead of 160
    shutil.copytree(tiny_model_dir, short)
    config = AutoConfig.from_pretrained(short)
    config.max_position_embeddings = 64
    AutoModel.from_config(config).save_pretrained(short)
    capsys.readouterr()  # the save's progress bar
    task_file = write(workdir, task_yaml(max_length=100))
    code, err = run_main(["adapt", f"long={tiny_model_dir}", f"short={short}", "--task", "tiny",
                          "--task-defs", str(task_file), "--train-sizes", "2", "--data-dir", str(workdir),
                          "--cache-dir", str(workdir / "cache"), "--output", str(workdir / "adapt"), "--quiet"],
                         capsys)
    assert_one_line(code, err, "'tiny'", "max_length", "START short's encoder takes at most 64")
    assert not (workdir / "adapt").exists()


@pytest.mark.parametrize("command", [["evaluate", "ckpt", "--batch-size", "0"],
                                     ["predict", "ckpt", "--task", "t", "--out", "p.tsv", "--batch-size", "-4"],
                                     ["compare", "a", "b", "--batch-size", "0"],
                                     ["adapt", "enc", "--task", "t", "--train-sizes", "2", "-o", "o",
                                      "--reference-size", "-10"]])
def test_counts_below_one_are_usage_errors(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "must be >= 1" in err


@pytest.mark.parametrize("override, says", [
    (["training.optim.lrr=1"], ["unknown key 'lrr'", "did you mean 'lr'", "(set by training.optim.lrr=1)"]),
    (["lr=3e-5"], ["training: unknown key 'lr'", "did you mean 'optim.lr'", "(set by lr=3e-5)"]),
])
def test_an_unknown_key_from_the_command_line_is_blamed_on_it(workdir, tiny_model_dir, capsys, override, says):
    task_file = write(workdir, task_yaml())
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, "--dry-run", overrides=override), capsys)
    assert_one_line(code, err, *says)


@pytest.mark.parametrize("command", [["evaluate", "CKPT", "--out", "FILE/x.json"],
                                     ["predict", "CKPT", "--task", "t", "--out", "FILE/x.tsv"],
                                     ["export", "CKPT", "--task", "t", "--out", "FILE/hf"],
                                     ["compare", "CKPT", "CKPT", "--out", "FILE/c.json"]])
def test_an_output_path_that_cannot_be_written_fails_before_the_work(workdir, capsys, command):
    a_file = workdir / "train.tsv"
    argv_ = [str(a_file) + part[4:] if part.startswith("FILE") else str(workdir / "nope") if part == "CKPT"
             else part for part in command]
    code, err = run_main(argv_, capsys)
    assert_one_line(code, err, "cannot write there", f"{a_file} is a file")


def test_predict_input_that_is_a_folder_says_so(workdir, capsys):
    code, err = run_main(["predict", str(workdir / "nope"), "--task", "t", "--input", str(workdir),
                          "--out", str(workdir / "p.tsv")], capsys)
    assert_one_line(code, err, "--input", "a directory, expected a file")


@pytest.mark.parametrize("changes, says", [
    ({"sampling_weight": 0}, ["tasks.yaml: every task trained here (tiny) has sampling_weight 0"]),
    ({"metrics": ["accuracy", "accuracy"]}, ["task 'tiny'", "field 'metrics': 'accuracy' twice"]),
])
def test_task_settings_that_train_nothing_or_score_twice(workdir, tiny_model_dir, capsys, changes, says):
    task_file = write(workdir, task_yaml(**changes))
    code, err = run_main(argv(workdir, task_file, tiny_model_dir), capsys)
    assert_one_line(code, err, *says)


def test_a_warning_of_huggingface_hub_prints_once_and_not_as_a_note_of_mtsmart():
    """An unreachable hub retries five times, each retry a warning through huggingface_hub's
    own handler; passed on to mtsmart's as well, each printed twice, once as a 'note'."""
    code = ("import logging; from mtsmart.cli import configure_logging; configure_logging(); "
            "import huggingface_hub.utils._http; "
            "logging.getLogger('huggingface_hub.utils._http').warning('Retrying in 1s [Retry 1/5].'); "
            "logging.getLogger('mtsmart').warning('a note')")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line for line in lines if "Retrying" in line] == ["Retrying in 1s [Retry 1/5]."], lines
    assert lines.count("mtsmart: note: a note") == 1, lines


@pytest.mark.parametrize("extra", [[], ["--dry-run"], ["--resume"]])
def test_an_output_that_is_a_file_is_refused(workdir, tiny_model_dir, capsys, extra):
    """It ended with exit code 1 and a bare 'File exists'."""
    task_file = write(workdir, task_yaml())
    (workdir / "out").write_text("notes")
    code, err = run_main(argv(workdir, task_file, tiny_model_dir, *extra), capsys)
    assert_one_line(code, err, "out: a file, not a folder")
    assert (workdir / "out").read_text() == "notes"


@pytest.mark.parametrize("rank, local_rank, error, expected", [
    ("0", "0", None, "mtsmart: error: bad"),
    ("1", "1", None, None),  # the parser's error: every replica parsed the same command line
    ("1", "1", "ConfigError", None),  # the same task file, encoder and data on every replica
    ("2", "0", "ConfigError", "mtsmart: error: replica 2: bad"),  # another node may read other files
    ("1", "1", "RelayedError", None),  # the main replica's own, which it printed
    ("2", "0", "RelayedError", None),
    ("1", "1", "ReplicaError", "mtsmart: error: replica 1: bad"),
    ("1", "1", "OSError", "mtsmart: error: replica 1: bad"),  # its own disk
])
def test_under_torchrun_one_replica_prints_each_error(monkeypatch, rank, local_rank, error, expected):
    from mtsmart import errors

    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    instance = None if error is None else (OSError("bad") if error == "OSError" else getattr(errors, error)("bad"))
    assert errors.error_line("bad", instance) == expected


@pytest.mark.parametrize("local_rank, printed", [("0", True), ("1", False)])
def test_an_interrupt_torchrun_passes_to_every_replica_is_reported_once(monkeypatch, capsys, local_rank, printed):
    from mtsmart import cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli.COMMANDS, "summarize", interrupted)
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert main(["summarize", "runs"]) == 130
    assert ("mtsmart: interrupted" in capsys.readouterr().err) == printed


def test_an_output_folder_this_process_may_not_write_in_fails_before_the_work(workdir, capsys, monkeypatch):
    """A read-only folder: faked, as root may write anywhere and chmod would prove nothing."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **kw: False if (os.path.abspath(path) == str(workdir)
                                                                           and mode == os.W_OK)
                        else real_access(path, mode, *a, **kw))
    code, err = run_main(["evaluate", str(workdir / "nope"), "--out", str(workdir / "new" / "x.json")], capsys)
    assert_one_line(code, err, "cannot write there", f"no permission in {workdir}")


def test_a_dry_run_under_torchrun_is_refused(workdir, tiny_model_dir, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = run_main(argv(workdir, write(workdir, task_yaml()), tiny_model_dir, "--dry-run"), capsys)
    assert_one_line(code, err, "--dry-run runs as a single process")
    assert not (workdir / "out").exists()


def test_a_full_disk_is_one_line_and_exit_code_1_not_a_user_error(workdir, capsys, monkeypatch):
    import errno

    from mtsmart import cli

    def disk_full(args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(workdir / "x.json"))

    monkeypatch.setitem(cli.COMMANDS, "summarize", disk_full)
    code, err = run_main(["summarize", str(workdir)], capsys)
    assert code == 1 and "Traceback" not in err
    assert err.splitlines() == [f"mtsmart: error: {workdir / 'x.json'}: {os.strerror(errno.ENOSPC)}"]


@pytest.mark.parametrize("command", [["evaluate", "CKPT"], ["predict", "CKPT", "--task", "t", "--out", "p.tsv"],
                                     ["compare", "CKPT", "CKPT"], ["summarize", "CKPT"]])
def test_only_train_runs_under_torchrun(workdir, capsys, monkeypatch, command):
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, err = run_main([str(workdir / "nope") if part == "CKPT" else part for part in command], capsys)
    assert_one_line(code, err, "only 'mtsmart train' runs under torchrun", f"'mtsmart {command[0]}'")


def test_export_into_a_file_says_it_needs_a_folder(workdir, capsys):
    code, err = run_main(["export", str(workdir / "nope"), "--task", "t", "--out", str(workdir / "train.tsv")],
                         capsys)
    assert_one_line(code, err, f"--out {workdir / 'train.tsv'}: a file; give a folder for the model")
    assert (workdir / "train.tsv").read_text(encoding="utf-8") == GOOD_TRAIN


@pytest.mark.parametrize("rank, command, prints", [
    ("0", ["summarize", "CKPT", "--which", "sometimes"], True),  # the parser's error
    ("1", ["summarize", "CKPT", "--which", "sometimes"], False),
    ("0", ["evaluate", "CKPT"], True),  # no such checkpoint: a user error every replica meets
    ("1", ["evaluate", "CKPT"], False),
])
def test_a_replica_that_leaves_an_error_to_another_waits_for_it_to_be_printed(
        workdir, capsys, monkeypatch, rank, command, prints):
    """torchrun stops every replica when one exits: a silent replica quicker than the one
    that prints would cut its line off, and the user would see no error at all."""
    from mtsmart import errors

    waits = []
    monkeypatch.setattr(errors.time, "sleep", waits.append)
    monkeypatch.setenv("RANK", rank)
    monkeypatch.setenv("LOCAL_RANK", rank)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with contextlib.suppress(SystemExit):  # the parser exits; a command's error returns
        assert main([str(workdir / "nope") if part == "CKPT" else part for part in command]) == 2
    printed = capsys.readouterr().err
    assert ("mtsmart" in printed and ": error: " in printed) == prints
    assert waits == ([] if prints else [errors.SILENT_REPLICA_WAIT_S])


def test_export_under_a_file_is_refused_before_the_checkpoint_loads(workdir, capsys):
    """An --out below a file can never be written: that is said at once, before a
    checkpoint (large, or here missing) is read."""
    code, err = run_main(["export", str(workdir / "nope"), "--task", "t", "--out", str(workdir / "train.tsv" / "hf")],
                         capsys)
    assert_one_line(code, err, f"--out {workdir / 'train.tsv' / 'hf'}: cannot write there", "is a file")
