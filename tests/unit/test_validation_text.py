"""Text in config files: no repeated keys, no control or bidi characters, plain names (issue 13, item 5)."""

from __future__ import annotations

import json

import pytest

from llmctl.config import load
from llmctl.errors import ConfigError
from llmctl.resources import data_dir

MODEL = {"name": "m", "layers": 2, "hidden": 64, "heads": 4, "vocab_size": 100}
LOCAL_SITE = (data_dir("site-configs") / "local.toml").read_text()
SUITE = 'name = "{name}"\n[[tasks]]\nname = "{task}"\n'
DATA = 'name = "{name}"\n[[sources]]\ntype = "stdlib"\n'


def write(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems(tmp_path, kind, name, text):
    with pytest.raises(ConfigError) as e:
        load(kind, write(tmp_path, name, text))
    return e.value.problems


# --- repeated keys -----------------------------------------------------------------

def test_repeated_json_key_is_refused_with_its_path(tmp_path):
    # json.loads keeps the last of a repeated key without a word
    doc = '{"name": "m", "layers": 2, "layers": 3, "hidden": 64, "heads": 4, "vocab_size": 100}'
    (line,) = problems(tmp_path, "model", "m.json", doc)
    assert line.startswith("layers: ") and "more than once" in line


def test_repeated_json_key_in_a_nested_object(tmp_path):
    doc = json.dumps({**MODEL, "rope": {"base": 1.0}})[:-2] + ', "base": 2.0}}'
    (line,) = problems(tmp_path, "model", "m.json", doc)
    assert line.startswith("rope.base: ") and "'base'" in line


def test_repeated_json_keys_inside_arrays_name_the_index(tmp_path):
    doc = ('{"inputs": {"model": "m.json"}, "parallelism": {}, "alternatives": '
           '[{"parallelism": {}, "predicted": {}}, {"parallelism": {"tp": 1, "tp": 2}}]}')
    (line,) = problems(tmp_path, "plan", "p.json", doc)
    assert line.startswith("alternatives[1].parallelism.tp: ")


@pytest.mark.parametrize("text", [
    'name = "a"\nname = "b"\n',                       # a key twice
    '[optimizer]\nlr = 1e-4\n[optimizer]\neps = 1\n',  # a table twice
    '[optimizer]\nlr = 1e-4\nlr = 2e-4\n',             # a key twice inside a table
])
def test_repeated_toml_key_is_refused(tmp_path, text):
    (line,) = problems(tmp_path, "train", "t.toml", text)
    assert "malformed TOML" in line and "line " in line


# --- control and bidi characters ---------------------------------------------------

@pytest.mark.parametrize("char,words", [
    ("\x00", "U+0000 NULL"), ("\u202e", "U+202E RIGHT-TO-LEFT OVERRIDE"), ("\x1b", "U+001B ESCAPE"),
    ("\u2066", "U+2066 LEFT-TO-RIGHT ISOLATE"), ("\n", "U+000A LINE FEED"), ("\u200b", "U+200B ZERO WIDTH SPACE"),
])
def test_model_name_with_control_or_bidi_character(tmp_path, char, words):
    doc = json.dumps({**MODEL, "name": f"llama{char}7b"})
    (line,) = problems(tmp_path, "model", "m.json", doc)
    assert line.startswith("name: ") and words in line and "position 5" in line
    assert char not in line  # the message shows the code point, never the character itself


def test_lone_surrogate_is_refused(tmp_path):
    # JSON can spell one; it cannot be written back as UTF-8
    doc = json.dumps({**MODEL, "name": "x"}).replace('"x"', '"x\\ud800"')
    (line,) = problems(tmp_path, "model", "m.json", doc)
    assert "U+D800" in line and "lone surrogate" in line


@pytest.mark.parametrize("name", ["llama-7b", "Llama 3.1 8B Instruct", "模型-7b", "gpt2.small_v2"])
def test_ordinary_names_still_load(tmp_path, name):
    assert load("model", write(tmp_path, "m.json", json.dumps({**MODEL, "name": name}))).name == name


@pytest.mark.parametrize("name,words", [(" m", "whitespace"), ("m" * 201, "at most 200"), ("", "")])
def test_names_are_trimmed_and_short(tmp_path, name, words):
    (line,) = problems(tmp_path, "model", "m.json", json.dumps({**MODEL, "name": name}))
    assert line.startswith("name: ") and words in line


@pytest.mark.parametrize("kind,fname,text,where", [
    ("data", "d.toml", DATA.format(name="web\\u202etxt", task=""), "name"),
    ("eval-suite", "s.toml", SUITE.format(name="s\\u0000", task="t"), "name"),
    ("eval-suite", "s.toml", SUITE.format(name="s", task="t\\u202e"), "tasks[0].name"),
    ("train", "t.toml", '[model]\nname = "m\\u0000"\nconfig_file = "m.json"\n', "model.name"),
    ("site", "local.toml", LOCAL_SITE.replace('name = "local"', 'name = "lo\\u202ecal"'), "name"),
    ("site", "local.toml", LOCAL_SITE.replace('description = "', 'description = "\\u001b[2J'), "description"),
    ("site", "local.toml", LOCAL_SITE.replace("[partitions.local]", '[partitions."lo\\ncal"]')
                                     .replace('default_partition = "local"', 'default_partition = "lo\\ncal"'),
     "partitions.'lo\\ncal'"),
])
def test_names_and_text_in_every_kind(tmp_path, kind, fname, text, where):
    lines = problems(tmp_path, kind, fname, text)
    assert any(x.startswith(f"{where}: ") and "U+" in x for x in lines), lines


def test_text_may_keep_tabs_and_newlines(tmp_path):
    task = ('task = "t"\noutput_type = "generate_until"\ndataset_path = "d.jsonl"\n'
            'doc_to_text = "Q: {{q}}\\n\\tA:"\nuntil = ["\\n\\n"]\n')
    assert load("eval-task", write(tmp_path, "t.toml", task)).until == ["\n\n"]


@pytest.mark.parametrize("name", ["my cluster", "a/b", "-x", "x.toml"[:0] or "é-cluster"])
def test_site_names_are_file_names(tmp_path, name):
    text = LOCAL_SITE.replace('name = "local"', f'name = "{name}"')
    (line,) = problems(tmp_path, "site", "local.toml", text)
    assert line.startswith("name: ") and "letters, digits" in line


def test_cli_reports_nul_in_model_name(tmp_path, cli):
    p = write(tmp_path, "m.json", json.dumps({**MODEL, "name": "m\x00x"}))
    r = cli("schema", "model", "--check", str(p))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"{p}: name: contains U+0000 NULL" in r.stderr and "\x00" not in r.stderr
