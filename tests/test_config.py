"""DistillConfig: defaults, ranges, YAML cell bodies with line numbers and suggestions."""

import pytest

from jupyter_distill.core.config import QUANTIZE_TYPES, DistillConfig
from jupyter_distill.core.errors import ConfigError, DistillError


def test_defaults_match_the_public_api():
    config = DistillConfig()
    assert (config.n_samples, config.top_k, config.steps) == (4, 2, 100)
    assert (config.bond_beta, config.bond_gamma, config.bond_tau) == (0.5, 0.1, 0.1)
    assert config.quantize == "q4_k_m"
    assert config.teacher == "local:smollm2-135m"
    assert config.student == "smollm2-135m"
    assert config.policy == "strict" and config.enforce_distillable is True
    assert config.workdir == ".distill"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 65}, "n_samples"),
        ({"n_samples": 2, "top_k": 3}, "top_k"),
        ({"steps": 0}, "steps"),
        ({"bond_beta": 1.5}, "bond_beta"),
        ({"bond_gamma": -0.1}, "bond_gamma"),
        ({"quantize": "q3_fancy"}, "quantize"),
        ({"policy": "lenient"}, "policy"),
        ({"alias": "../evil"}, "alias"),
        ({"name": "has space"}, "name"),
    ],
)
def test_out_of_range_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_kwargs(**kwargs)
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, DistillError)


def test_unknown_quantize_lists_valid_types():
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_kwargs(quantize="q9")
    for kind in QUANTIZE_TYPES:
        assert kind in str(info.value)


def test_every_quantize_type_the_export_makes_is_accepted_by_the_config(capsys):
    from jupyter_distill.core.quant_types import QUANT_TYPES
    from jupyter_distill.export.gguf import validate_quantize
    from jupyter_distill.notebook.magics import parse_line

    assert set(QUANTIZE_TYPES) == set(QUANT_TYPES) and "q6_k" in QUANTIZE_TYPES
    for kind in QUANTIZE_TYPES:
        assert DistillConfig.from_kwargs(quantize=kind).quantize == kind == validate_quantize(kind)
        assert DistillConfig.from_kwargs(quantize=kind.upper().replace("_", "-")).quantize == kind
    assert parse_line("export --help") is None  # help printed
    export_help = " ".join(capsys.readouterr().out.split())
    assert all(kind in export_help for kind in QUANTIZE_TYPES), export_help


def test_quantize_none_spellings_skip_export():
    for value in (None, "none", "None", False):
        assert DistillConfig.from_kwargs(quantize=value).quantize is None
    assert DistillConfig.from_kwargs(quantize="Q8_0").quantize == "q8_0"


def test_from_yaml_reads_a_cell_body_and_overrides_win():
    body = "dataset: data/tickets.jsonl\nteacher: local:smollm2-135m\nn_samples: 4\ntop_k: 2\nsteps: 60\n"
    config = DistillConfig.from_yaml(body, steps=10)
    assert config.dataset == "data/tickets.jsonl"
    assert config.steps == 10
    assert config.n_samples == 4


def test_from_yaml_unknown_key_names_line_and_suggests():
    body = "dataset: x.jsonl\nn_sample: 4\n"
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_yaml(body)
    message = str(info.value)
    assert "'n_sample'" in message and "line 2" in message and "Did you mean 'n_samples'" in message


def test_from_yaml_syntax_error_names_line():
    body = "dataset: x.jsonl\nteacher: [unclosed\nsteps: 3\n"
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_yaml(body)
    assert "line" in str(info.value)


def test_from_yaml_invalid_value_names_line_and_key():
    body = "dataset: x.jsonl\n\nsteps: -3\n"
    with pytest.raises(ConfigError) as info:
        DistillConfig.from_yaml(body)
    assert "'steps'" in str(info.value) and "line 3" in str(info.value)


def test_from_yaml_rejects_non_mapping():
    with pytest.raises(ConfigError):
        DistillConfig.from_yaml("- a\n- b\n")


def test_empty_body_gives_defaults():
    assert DistillConfig.from_yaml("").steps == 100


def test_public_dict_hides_callables():
    def verifier(row, response):
        return 1.0

    public = DistillConfig.from_kwargs(judge=verifier, dataset=[{"prompt": "x"}]).to_public_dict()
    assert public["judge"].startswith("<callable")
    assert public["dataset"] == "<list of 1 rows>"
