"""Bad input fails with one clear ScyllaError line (library) or exit code 2 (CLI)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_llama
from scylla import DraftModel, PromptLookup, ScyllaError, SpeculativeDecoder
from pipeline.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_mismatched_vocabulary(target):
    with pytest.raises(ScyllaError, match="vocabulary"):
        SpeculativeDecoder(target, DraftModel(tiny_llama(vocab_size=32, layers=1)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": 1.0, "top_p": 0.0}, "top_p"),
        ({"temperature": 1.0, "top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
    ],
)
def test_bad_sampling_settings(target, kwargs, message):
    with pytest.raises(ScyllaError, match=message):
        SpeculativeDecoder(target).generate(torch.tensor([[1, 2, 3]]), **kwargs)


def test_bad_prompts(target):
    decoder = SpeculativeDecoder(target, PromptLookup())
    with pytest.raises(ScyllaError, match="non-empty"):
        decoder.generate(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ScyllaError, match="empty prompt"):
        decoder.generate(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 1], [0, 0]]))
    with pytest.raises(ScyllaError, match="shape"):
        decoder.generate(torch.tensor([[1, 2, 3]]), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ScyllaError, match="left-padded"):
        decoder.generate(torch.tensor([[1, 2, 3]]), torch.tensor([[1, 1, 0]]))


def test_bad_drafter_settings():
    with pytest.raises(ScyllaError):
        PromptLookup(max_ngram=0)
    with pytest.raises(ScyllaError):
        PromptLookup(num_draft_tokens=0)


def test_cli_bad_jsonl(tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"text": 3}\n')
    assert main(["generate", "--prompts-file", str(bad)]) == 2
    assert "p.jsonl:2" in capsys.readouterr().err


def test_cli_usage_error_exits_2():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "generate"], capture_output=True, text=True)
    assert proc.returncode == 2 and "--prompt" in proc.stderr


def test_help_version_and_argument_errors_load_no_heavy_library():
    """`scylla --help` (every verb's too), `--version` and argument errors answer before torch, transformers,
    statsmodels or matplotlib load: in a fraction of a second (issue 28)."""
    probe = ("import sys\nfrom pipeline.cli import build_parser, main\n"
             "verbs = [v for a in build_parser()._actions if a.choices for v in a.choices]\n"
             "argvs = [['--help'], ['--version'], ['generate', '--prompts', '3']] + [[v, '--help'] for v in verbs]\n"
             "for argv in argvs:\n"
             "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
             "print(sorted(m for m in ('torch', 'transformers', 'statsmodels', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout[-300:] + proc.stderr


def test_flags_are_not_abbreviated(capsys):
    """`generate --prompts 3` is not read as --prompts-file 3: --prompts is eval's and select's count."""
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--prompts", "3"])
    assert exit_.value.code == 2 and "prompts file" not in capsys.readouterr().err


def test_threads_flag(capsys, monkeypatch):
    import torch

    from scylla.threads import free_cores, use_threads

    before = torch.get_num_threads()
    try:
        with pytest.raises(SystemExit) as exit_:
            main(["generate", "--threads", "0", "--prompt", "hi"])
        assert exit_.value.code == 2 and "--threads must be >= 1" in capsys.readouterr().err
        assert use_threads(1) == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert free_cores() == 3
    finally:
        torch.set_num_threads(before)


def test_version(capsys):
    import scylla

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and capsys.readouterr().out.strip() == f"scylla {scylla.__version__}"


def test_every_flag_has_help_that_states_its_default():
    """`scylla VERB --help` documents every flag, and every flag with a default says what it is (issue 16)."""
    import argparse

    from pipeline.cli import build_parser

    parser = build_parser()
    (verbs,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, verb in verbs.choices.items():
        text = " ".join(verb.format_help().split())
        assert verb.description and "(default: )" not in text, name
        for action in verb._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"scylla {name} {action.option_strings[0]} has no help"
            if action.default is not None and action.default is not False and action.default != []:  # 0 is one
                help_text = " ".join(verb.formatter_class(name)._get_help_string(action).replace("%%", "%").split())
                assert "default" in help_text.lower() and help_text in text, (name, action.option_strings)
