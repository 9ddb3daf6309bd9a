"""The settings are declared once, in jaxfl.configs, and everything else is made from them.

Checked by construction, not against a hand-kept list: every setting flag's default is None
(the value comes from the chosen algorithm's config), its help is the field's, a field of the
same name means the same thing in every config, ``--algo X`` gets exactly X's config defaults,
every declared check refuses a value outside it with an error naming the flag, and the
capabilities a spec declares match the fields its config holds.
"""

import dataclasses
import subprocess
import sys

import pytest

from jaxfl.cli import config_flags, flags
from jaxfl.configs import SPECS, fields, settings
from jaxfl.configs.shared import ClockFields, DPFields, FaultFields, ParticipationFields
from jaxfl.core.errors import ConfigError
from jaxfl.experiments.builder import config_from_args


def _actions():
    return {a.dest: a for a in flags._parser()._actions}


def test_every_setting_is_a_flag_whose_default_and_help_come_from_the_field():
    actions = _actions()
    every = dict(config_flags.FAULT_SETTINGS)
    for spec in SPECS.values():
        every |= settings(spec.config)
    assert every
    for name, field in every.items():
        action = actions[name]
        assert action.default is None, name  # the default lives in the config alone
        assert field.metadata["help"] in action.help.replace("%%", "%"), name
        assert action.type in (None, fields.value_type(field)), name


def test_a_setting_means_the_same_in_every_config():
    seen: dict[str, dataclasses.Field] = {}
    for spec in SPECS.values():
        for name, field in settings(spec.config).items():
            first = seen.setdefault(name, field)
            for key in ("help", "check", "choices", "allowed"):
                assert field.metadata[key] == first.metadata[key], (spec.name, name, key)
            assert fields.value_type(field) is fields.value_type(first), (spec.name, name)


@pytest.mark.parametrize("algo", list(SPECS))
def test_an_algorithm_gets_its_own_config_defaults(algo):
    args = flags.parse(["--algo", algo])
    built = config_from_args(SPECS[algo].config, args)
    expected = SPECS[algo].config()
    if "rounds" in {f.name for f in dataclasses.fields(expected)}:  # HypCluster's, from --rounds
        expected = dataclasses.replace(expected, rounds=args.rounds)
    assert built == expected
    for name in config_flags.ALGORITHM_SETTINGS:  # what it does not read is cleared
        if name not in settings(SPECS[algo].config):
            assert getattr(args, name) is None, name


def test_local_epochs_default_is_the_algorithms_and_a_given_value_wins():
    assert flags.parse(["--algo", "dsfl"]).local_epochs == 5
    assert flags.parse(["--algo", "fedavg"]).local_epochs == 1
    assert flags.parse(["--algo", "fedmd"]).local_epochs == 2
    assert flags.parse(["--algo", "fedavg", "--local-epochs", "3"]).local_epochs == 3
    several = flags.parse(["--algo", "fedavg,dsfl"])  # resolved per algorithm as each runs
    assert several.local_epochs is None
    assert config_flags.for_algorithm(several, "dsfl").local_epochs == 5
    assert several.local_epochs is None


def _outside(field):
    """A value the field's check refuses."""
    rule = field.metadata["check"]
    integer = fields.value_type(field) is int
    bound = fields._BOUND.match(rule)
    if bound:
        op, limit = bound.group(1), float(bound.group(2))
        value = limit - 1 if op in (">", ">=") else limit + 1
        value = limit if op in (">", "<") else value
    else:
        low_bracket, low, high, high_bracket = fields._INTERVAL.match(rule).groups()
        value = float(high) + 1
    return str(int(value) if integer else value)


def _checked():
    for algo, spec in SPECS.items():
        for name, field in settings(spec.config).items():
            if field.metadata["check"] or field.metadata["choices"]:
                yield algo, name, field
    for name, field in config_flags.FAULT_SETTINGS.items():
        if field.metadata["check"] or field.metadata["choices"]:
            yield "fedavg", name, field


@pytest.mark.parametrize("algo,name,field", list(_checked()), ids=lambda v: str(v)[:20])
def test_every_declared_check_refuses_a_value_outside_it(algo, name, field):
    value = "not-a-choice" if field.metadata["choices"] else _outside(field)
    argv = ["--algo", algo, "--dataset", "blobs", "--clients", "10", fields.flag_name(name), value]
    if name.startswith("dp_") and name != "dp_clip":
        argv += ["--dp-clip", "1"]
    if name == "dp_clip_count_noise":
        argv += ["--dp-clip-quantile", "0.5"]
    with pytest.raises(ConfigError, match=f"{fields.flag_name(name)} .*is not allowed"):
        flags.validate(flags.parse(argv))


def test_capabilities_match_the_configs():
    for name, spec in SPECS.items():
        assert issubclass(spec.config, DPFields) == spec.dp, name
        if spec.clock:
            assert issubclass(spec.config, ClockFields), name
        assert issubclass(spec.config, ParticipationFields) == spec.participation, name
        assert ("unseen_clients" in settings(spec.config)) >= spec.unseen, name
        assert set(spec.static_hparams) <= set(settings(spec.config)), name
        assert set(spec.attacks) <= set(settings(FaultFields)["attack"].metadata["choices"])


def test_a_capability_flag_for_an_algorithm_without_it_is_an_error():
    for argv, needle in [
        (["--algo", "fccl", "--dp-clip", "1"], "--dp-clip 1.0 is not allowed; allowed: only"),
        (["--algo", "dsfl", "--round-deadline", "3"], "keeps no virtual clock"),
        (["--algo", "incfl", "--client-speed", "lognormal:1"], "keeps no virtual clock"),
        (["--algo", "ditto", "--unseen-clients", "2"], "trains every client"),
    ]:
        with pytest.raises(ConfigError, match=needle):
            flags.validate(flags.parse([*argv, "--dataset", "blobs", "--clients", "10"]))


def test_a_flag_the_algorithm_does_not_read_is_noted_and_ignored(capsys):
    args = flags.parse(["--algo", "fedavg", "--temperature", "0.5"])
    assert args.temperature is None
    assert "--temperature is ignored: --algo fedavg does not read it (read by dsfl)" in (
        capsys.readouterr().err
    )


def test_algo_help_shows_that_algorithms_defaults_and_only_its_settings():
    fedmd = flags._parser(algo="fedmd").format_help()
    assert "local epochs on private data (default 2)" in " ".join(fedmd.split())
    assert "--temperature" not in fedmd and "--dp-clip" in fedmd
    every = " ".join(flags._parser().format_help().split())
    assert "local epochs on private data (default dsfl 5, fedmd 2, else 1)" in every


def test_configs_and_help_import_no_jax():
    code = (
        "import sys; import jaxfl.configs, jaxfl.cli.flags as f; f._parser().format_help(); "
        "assert 'jax' not in sys.modules, 'jax imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_library_refuses_a_bad_value_with_the_flags_words():
    with pytest.raises(
        ConfigError, match=r"--temperature 0\.0 is not allowed; allowed: a number > 0"
    ):
        fields.check(SPECS["dsfl"].config(temperature=0.0))
    fields.check(SPECS["dsfl"].config())  # the defaults pass
