"""Security (issue 8): weights come from safetensors only, a model's own Python code runs only when the
experiment file says so, and chat templates render in jinja2's sandbox. Every attack here would write
a marker file if it got to run; each test checks the marker is absent, and the controls show that the
same payloads do write it when something runs them."""

from __future__ import annotations

import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from conftest import saved_lora_adapter

from harness.errors import UserError
from harness.models import (DevicePolicy, ModelSpec, check_chat_template, load_base, load_model, load_tokenizer,
                            resolve_model, tiny_tokenizer)

CPU = DevicePolicy("cpu", "float32", gradient_checkpointing=False)


class _Opens:
    """Unpickling this calls open(path, "w"): the file appears exactly when the pickle is loaded."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return open, (str(self.path), "w")


def pickled_payload(marker: Path) -> bytes:
    return pickle.dumps({"model.embed_tokens.weight": _Opens(marker)})


@pytest.fixture(scope="module")
def tiny() -> Path:
    return resolve_model("builtin:tiny-random")


def copy_without_weights(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    return dest


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_the_pickle_payload_is_live(tmp_path):
    """The control for the tests below: loading the payload the ordinary way writes the marker."""
    marker = tmp_path / "ran"
    pickle.loads(pickled_payload(marker))
    assert marker.exists()


# -- weights: safetensors only -----------------------------------------------------------------


def test_model_with_only_pickled_weights_is_refused_before_anything_is_read(tiny, tmp_path):
    model_dir = copy_without_weights(tiny, tmp_path / "pickled")
    marker = tmp_path / "unpickled"
    (model_dir / "pytorch_model.bin").write_bytes(pickled_payload(marker))
    with pytest.raises(UserError, match="no .safetensors weights") as err:
        resolve_model(str(model_dir), source="exp.yaml: field 'model'")
    assert one_line(err).startswith("exp.yaml: field 'model'")
    # The loader checks too, for paths that did not come through resolve_model.
    with pytest.raises(UserError, match="pickled weights are not loaded"):
        load_model(ModelSpec(str(model_dir)), CPU)
    assert not marker.exists()


def test_cached_hub_model_with_only_pickled_weights_is_refused(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--some-org--pickled"
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    (snapshot / "config.json").write_text("{}")
    (snapshot / "pytorch_model.bin").write_bytes(pickled_payload(tmp_path / "unpickled"))
    with pytest.raises(UserError, match="model directory 'some-org/pickled' has no .safetensors weights"):
        resolve_model("some-org/pickled")
    (snapshot / "model.safetensors").write_bytes(b"")  # the same snapshot with safetensors resolves
    assert resolve_model("some-org/pickled") == snapshot
    assert not (tmp_path / "unpickled").exists()


def test_adapter_with_only_pickled_weights_is_refused(tiny, tmp_path):
    adapter = saved_lora_adapter(tiny, tmp_path / "adapter")
    assert (adapter / "adapter_model.safetensors").exists()
    load_model(ModelSpec(str(tiny), (str(adapter),)), CPU)  # a safetensors adapter loads
    pickled = copy_without_weights(adapter, tmp_path / "pickled-adapter")
    marker = tmp_path / "unpickled"
    (pickled / "adapter_model.bin").write_bytes(pickled_payload(marker))
    # PEFT would fall back to adapter_model.bin (torch.load with weights_only=True); the harness refuses first.
    with pytest.raises(UserError, match=r"has no adapter_model\.safetensors \(adapter_model\.bin: pickled") as err:
        load_model(ModelSpec(str(tiny), (str(adapter), str(pickled))), CPU)
    one_line(err)
    assert not marker.exists()
    with pytest.raises(UserError, match="not a LoRA adapter directory"):
        load_model(ModelSpec(str(tiny), (str(tmp_path / "missing"),)), CPU)


# -- trust_remote_code -------------------------------------------------------------------------


def _experiment(project: Path, extra: str = "") -> Path:
    path = project / "experiments" / "sec.yaml"
    path.write_text(f"""name: sec
model: builtin:tiny-random
{extra}
eval:
  - name: general
    data: experiments/data/general_knowledge.jsonl
    rubric: rubrics/general_knowledge.yaml
variants:
  base:
    method: none
""")
    return path


def test_trust_remote_code_is_off_unless_the_experiment_file_turns_it_on(project):
    from harness.config import load_config

    assert load_config(_experiment(project)).experiment.trust_remote_code is False
    assert load_config(_experiment(project, "trust_remote_code: true")).experiment.trust_remote_code is True


def model_with_its_own_code(tiny: Path, dest: Path, marker: Path) -> Path:
    """The tiny model, declared as an architecture transformers does not know, whose config, model and
    tokenizer classes are Python files in the directory that write `marker` when imported."""
    shutil.copytree(tiny, dest)
    config = json.loads((dest / "config.json").read_text())
    config["model_type"] = "evil_llama"
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig",
                          "AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (dest / "config.json").write_text(json.dumps(config))
    tok_config = json.loads((dest / "tokenizer_config.json").read_text())
    tok_config["tokenizer_class"] = "EvilTokenizer"
    tok_config["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]}
    (dest / "tokenizer_config.json").write_text(json.dumps(tok_config))
    ran = f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
    (dest / "configuration_evil.py").write_text(
        ran + "from transformers import LlamaConfig\n\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'evil_llama'\n")
    (dest / "modeling_evil.py").write_text(
        ran + "from transformers import LlamaForCausalLM\n\nfrom .configuration_evil import EvilConfig\n\n\n"
        "class EvilForCausalLM(LlamaForCausalLM):\n    config_class = EvilConfig\n")
    (dest / "tokenization_evil.py").write_text(
        ran + "from transformers import PreTrainedTokenizerFast\n\n\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    return dest


def test_a_model_with_its_own_code_is_refused_and_the_code_never_runs(tiny, tmp_path, project, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.config import load_config

    marker = tmp_path / "remote-code-ran"
    model_dir = model_with_its_own_code(tiny, tmp_path / "evil", marker)
    seen = []  # trust_remote_code as each from_pretrained call received it (the real calls still run)
    for cls in (AutoModelForCausalLM, AutoTokenizer):
        real = cls.from_pretrained

        def spy(*args, _real=real, **kwargs):
            seen.append(kwargs.get("trust_remote_code"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", spy)
    exp = load_config(_experiment(project)).experiment
    with pytest.raises(UserError, match="`trust_remote_code: true` in the experiment file") as err:
        load_model(ModelSpec(str(model_dir)), CPU, exp.trust_remote_code)
    assert one_line(err).startswith(f"{model_dir}: the model ships Python code of its own")
    with pytest.raises(UserError, match="ships Python code of its own"):
        load_tokenizer(model_dir, exp.trust_remote_code)
    with pytest.raises(UserError, match="ships Python code of its own"):
        load_tokenizer(model_dir)  # the default
    assert seen == [False, False, False]
    assert not marker.exists()


def test_the_marker_records_a_models_own_code_running(tiny, tmp_path, monkeypatch):
    """The control: with trust_remote_code on, transformers runs the directory's code."""
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(dynamic, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not the user's cache
    monkeypatch.setattr(sys, "path", list(sys.path))
    marker = tmp_path / "remote-code-ran"
    model = load_base(model_with_its_own_code(tiny, tmp_path / "evil", marker), CPU, trust_remote_code=True)
    assert type(model).__name__ == "EvilForCausalLM"
    assert marker.read_text() == "ran"


# -- chat templates ----------------------------------------------------------------------------

ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os.popen('touch MARKER').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch MARKER').read() }}",
    "{{ joiner.__init__.__globals__.__builtins__.open('MARKER', 'w') }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch MARKER') }}",
    "{% for m in messages %}{{ m.__class__.__init__.__globals__ }}{{ m['content'] }}{% endfor %}",
    "{{ dict.__call__.__globals__.__builtins__.open('MARKER', 'w') }}",
]


def tokenizer_dir_with_template(dest: Path, template: str) -> Path:
    tok = tiny_tokenizer()
    tok.chat_template = template
    tok.save_pretrained(dest)
    return dest


@pytest.mark.parametrize("template", ESCAPES)
def test_sandbox_escapes_in_a_chat_template_are_refused_and_run_nothing(tmp_path, template):
    marker = tmp_path / "template-ran"
    tok_dir = tokenizer_dir_with_template(tmp_path / "tok", template.replace("MARKER", str(marker)))
    tok = load_tokenizer(tok_dir)
    with pytest.raises(UserError, match="does what jinja2's sandbox forbids") as err:
        check_chat_template(tok, str(tok_dir))
    assert one_line(err).startswith(f"{tok_dir}: the chat template")
    assert "expected a template that only formats the messages" in str(err.value)
    assert not marker.exists()


def test_generation_renders_a_hostile_template_in_the_sandbox(tiny, tmp_path):
    """Without the check, the harness's own rendering path refuses the same template."""
    from jinja2.exceptions import SecurityError

    from harness.config import GenerationSettings
    from harness.generate import generate

    marker = tmp_path / "template-ran"
    tok = load_tokenizer(tiny)
    tok.chat_template = ESCAPES[1].replace("MARKER", str(marker))
    model = load_model(ModelSpec(str(tiny)), CPU)
    with pytest.raises(SecurityError):
        generate(model, tok, [[{"role": "user", "content": "hi"}]], GenerationSettings(max_new_tokens=2), progress=False)
    assert not marker.exists()


NO_SYSTEM_ROLE = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
                  "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
                  "{% if add_generation_prompt %}<assistant>{% endif %}")


def test_working_chat_templates_pass(tiny):
    check_chat_template(load_tokenizer(tiny), str(tiny))  # ChatML
    tok = tiny_tokenizer()
    tok.chat_template = NO_SYSTEM_ROLE  # a model without a system role (as Gemma's template says)
    check_chat_template(tok, "no-system")


@pytest.mark.parametrize("template, expected", [
    ("{% for m in messages %}{{ m['content'] }}", "is not valid Jinja"),
    ("{{ raise_exception('Conversation roles must alternate') }}",
     "fails on a user/assistant conversation (Conversation roles must alternate)"),
    ("{{ messages[0]['content'] + 1 }}", "fails on a user/assistant conversation"),
    ("{% for m in messages %}<{{ m['role'] }}>{% endfor %}", "leaves the messages' text out"),
])
def test_broken_chat_templates_are_one_line_user_errors(template, expected):
    tok = tiny_tokenizer()
    tok.chat_template = template
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
        check_chat_template(tok, "models/broken")
    assert one_line(err).startswith("models/broken: the chat template")


def test_an_experiment_whose_model_has_a_hostile_template_stops_before_anything_is_written(tiny, project, capsys,
                                                                                          monkeypatch):
    """`harness run` renders the template once while validating its inputs: exit 2, one line, no
    results file, and the template's payload never ran."""
    from harness.cli import main

    monkeypatch.chdir(project)
    marker = project / "template-ran"
    model = project / "models" / "hostile"
    shutil.copytree(tiny, model)
    tokenizer_dir_with_template(model, ESCAPES[1].replace("MARKER", str(marker)))
    exp = _experiment(project).read_text().replace("model: builtin:tiny-random", "model: models/hostile")
    (project / "experiments" / "sec.yaml").write_text(exp)
    capsys.readouterr()
    code = main(["run", str(project / "experiments" / "sec.yaml"), "--db", str(project / "results" / "r.duckdb")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "the chat template" in err[0] and "sandbox forbids" in err[0]
    assert "field 'model' of" in err[0]
    assert not marker.exists() and not (project / "results").exists() and not (project / "reports").exists()
