"""Observer options have one owner, their spec: :func:`talkbench.observers.build` parses ``ctx.options`` against the
observer's own :class:`OptionSpec` s (typed, defaults filled, choices and minimums checked) before the module's
``build`` runs, whether the observer is built by ``evaluate`` or from Python."""

from __future__ import annotations

from typing import Any

import pytest

from talkbench import faces, observers
from talkbench.nets import lpips as net_lpips
from talkbench.observers import OPTIONS, SPECS, ObserverContext, ObserverSpec, OptionSpec
from talkbench.observers.specs import ALL_SPECS

#: every option with a constraint the spec checks, with its observer
CHECKED: list[tuple[ObserverSpec, OptionSpec]] = [(spec, option) for spec in ALL_SPECS for option in spec.options
                                                  if option.choices is not None or option.minimum is not None]


def _ids(pairs: list[tuple[ObserverSpec, OptionSpec]]) -> list[str]:
    return [f"{spec.name}:{option.name}" for spec, option in pairs]


def _bad(option: OptionSpec) -> str:
    """A command-line value the spec refuses: no choice, or below the minimum."""
    if option.choices is not None:
        assert "no-such-choice" not in option.choices
        return "no-such-choice"
    return str(int(option.minimum) - 1) if option.type == "int" else str(option.minimum - 0.5)


def _good(option: OptionSpec) -> tuple[str, Any]:
    """A command-line value the spec accepts (not the default where it can) and its typed value."""
    if option.choices is not None:
        return str(option.choices[-1]), option.choices[-1]
    value = int(option.minimum) + 2 if option.type == "int" else option.minimum + 1.5
    return str(value), value


def _foreign(spec: ObserverSpec) -> str:
    """An option of another observer (a run's ``ctx.options`` holds those of every observer of the run)."""
    own = {o.name for o in spec.options}
    return next(name for name in sorted(OPTIONS) if name not in own)


def _must_not_build(ctx: ObserverContext) -> None:
    pytest.fail("the module's build was reached with a bad option (a model could have been loaded)")


def test_every_constrained_option_is_covered():
    names = {option.name for _, option in CHECKED}
    assert {"lpips_net", "lpips_chunk", "lse_mode", "lse_chunk", "avhubert_beam", "max_frames", "fid_stride",
            "fvd_windows", "csim_backbone", "lmd_align", "mvm_long_clips", "mini_lipreader"} <= names
    assert {spec.name for spec, _ in CHECKED} == {s.name for s in ALL_SPECS if any(
        o.choices is not None or o.minimum is not None for o in s.options)}


@pytest.mark.parametrize(("spec", "option"), CHECKED, ids=_ids(CHECKED))
def test_a_bad_value_is_refused_before_the_module_builds(spec: ObserverSpec, option: OptionSpec,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(observers.module(spec), "build", _must_not_build)
    bad = _bad(option)
    with pytest.raises(ValueError, match=f"Option `{option.name}` must be .*, but got '{bad}'"):
        observers.build(spec, ObserverContext(options={option.name: bad}))


@pytest.mark.parametrize(("spec", "option"), CHECKED, ids=_ids(CHECKED))
def test_a_good_value_reaches_the_module_typed(spec: ObserverSpec, option: OptionSpec,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ObserverContext] = []
    monkeypatch.setattr(observers.module(spec), "build", seen.append)
    text, typed = _good(option)
    ctx = ObserverContext(device="cpu", protocol="mini", mouth_roi="landmark-aligned",
                          options={option.name: text, _foreign(spec): "not-checked-here"})
    observers.build(spec, ctx)
    (got,) = seen
    assert got.options[option.name] == typed and type(got.options[option.name]) is type(typed)
    # only its own options, the others at their defaults; the rest of the context as given
    assert got.options == {**{o.name: o.default for o in spec.options}, option.name: typed}
    assert (got.device, got.protocol, got.mouth_roi) == ("cpu", "mini", "landmark-aligned")


@pytest.mark.parametrize("spec", [s for s in ALL_SPECS if s.options], ids=lambda s: s.name)
def test_command_line_strings_of_the_defaults_arrive_as_the_defaults(spec: ObserverSpec,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ObserverContext] = []
    monkeypatch.setattr(observers.module(spec), "build", seen.append)
    given = {o.name: str(o.default).lower() if o.type == "bool" else str(o.default)
             for o in spec.options if o.default is not None}
    observers.build(spec, ObserverContext(options=given))
    for option in spec.options:
        value = seen[0].options[option.name]
        assert value == option.default and type(value) is type(option.default), option.name


def test_an_option_no_observer_has_is_refused_and_none_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SPECS["lpips"]
    monkeypatch.setattr(observers.module(spec), "build", _must_not_build)
    with pytest.raises(ValueError, match="Unknown option `lpips_nett`; the options are .*lpips_net"):
        observers.build(spec, ObserverContext(options={"lpips_nett": "vgg"}))
    seen: list[ObserverContext] = []
    monkeypatch.setattr(observers.module(spec), "build", seen.append)
    observers.build(spec, ObserverContext(options={"lpips_chunk": None}))
    assert seen[0].options == {"lpips_net": "alex", "lpips_chunk": 64}


def test_the_modules_tables_cover_the_specs_choices() -> None:
    """What a module maps a choice to (a card, a recipe) exists for every choice its spec allows."""
    from talkbench.observers import identity, landmark_distance, mini_lipreader, syncnet

    choices = {o.name: o.choices for s in ALL_SPECS for o in s.options if o.choices is not None}
    assert tuple(identity.CARDS) == choices["csim_backbone"]
    assert set(mini_lipreader.CARDS) == set(choices["mini_lipreader"])
    assert tuple(net_lpips.CARDS) == choices["lpips_net"]
    assert landmark_distance.ALIGNS == choices["lmd_align"]
    assert syncnet.TRACK_AGGREGATIONS == choices["lse_track_agg"]
    assert faces.DETECTORS == choices["lse_detector"]
