"""The training options, declared once: :class:`csba.train.TrainConfig`'s fields made with
``_opt`` (help text, choices) become ``--flags`` of ``train`` and ``protocol`` and the help of
the dashboard's Training page, so an option added to TrainConfig reaches all three.

``config_from_args`` builds a TrainConfig from parsed arguments and ``option_flags`` turns
parsed arguments back into the same flags (the protocol's worker processes get exactly the
serial path's config this way).
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from .config import TrainConfig

__all__ = [
    "PROTOCOL_OPTIONS",
    "TrainOption",
    "add_train_options",
    "check_values",
    "config_from_args",
    "option_flags",
    "train_option",
    "train_options",
]


@dataclass(frozen=True)
class TrainOption:
    """One command-line training option (a TrainConfig field)."""

    name: str  # TrainConfig field and argparse dest, e.g. "image_size"
    flag: str  # "--image-size"
    type: type  # int | float | str | bool (str for Optional[str])
    default: Any  # TrainConfig's default
    help: str  # argparse help (may hold %(default)s)
    choices: tuple | None = None
    metavar: str | None = None

    def help_text(self) -> str:
        """The help with ``%(default)s`` filled, as argparse does (for the dashboard)."""
        return self.help % {"default": self.default}


def _names(name: str) -> list[str]:
    """What ``{names}`` in a help text lists: the registered datasets or variants."""
    if name == "dataset":
        from .data import DATASETS

        return list(DATASETS)
    if name == "variant":
        from .models import list_models

        return list_models()
    if name == "backbone":
        from .backbones import list_backbones

        return list_backbones()
    return []


def train_options() -> list[TrainOption]:
    """Every TrainConfig field that is a command-line option, in field order."""
    hints = typing.get_type_hints(TrainConfig)
    out = []
    for f in dataclasses.fields(TrainConfig):
        if "help" not in f.metadata:
            continue
        hint = hints[f.name]
        base = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
        helptext = f.metadata["help"]
        if "{names}" in helptext:
            helptext = helptext.replace("{names}", ", ".join(_names(f.name)))
        choices = f.metadata.get("choices")
        out.append(
            TrainOption(
                name=f.name,
                flag="--" + f.name.replace("_", "-"),
                type=base,
                default=f.default,
                help=helptext,
                choices=tuple(choices) if choices is not None else None,
                metavar=f.metadata.get("metavar"),
            )
        )
    return out


def train_option(name: str) -> TrainOption:
    """The option of TrainConfig field ``name`` (KeyError when it is not an option)."""
    for opt in train_options():
        if opt.name == name:
            return opt
    raise KeyError(f"TrainConfig.{name} is not a command-line option")


# The options ``protocol`` passes to every run: all but what it sets per run itself.
PROTOCOL_OPTIONS = tuple(
    o.name for o in train_options() if o.name not in ("variant", "seed", "run_dir", "resume")
)


def add_train_options(
    parser: argparse.ArgumentParser,
    names: typing.Iterable[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add the training options ``names`` (default: all) to ``parser``; ``defaults`` overrides
    TrainConfig's default of some (``protocol`` records the conflict matrix every 5 epochs)."""
    defaults = defaults or {}
    wanted = None if names is None else set(names)
    for opt in train_options():
        if wanted is not None and opt.name not in wanted:
            continue
        default = defaults.get(opt.name, opt.default)
        kw: dict[str, Any] = {"default": default, "help": opt.help, "dest": opt.name}
        if opt.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = opt.type
            if opt.choices is not None:
                kw["choices"] = opt.choices
            if opt.metavar is not None:
                kw["metavar"] = opt.metavar
        parser.add_argument(opt.flag, **kw)


def config_from_args(args: argparse.Namespace, names: typing.Iterable[str], **fixed) -> TrainConfig:
    """A TrainConfig from the parsed options ``names`` plus ``fixed`` fields (which win)."""
    values = {n: getattr(args, n) for n in names}
    values.update(fixed)
    return TrainConfig(**values)


def option_flags(args: argparse.Namespace, names: typing.Iterable[str]) -> list[str]:
    """The parsed options ``names`` as command-line flags that parse back to the same values
    (floats by ``repr``, so they round-trip exactly; None, the "not given" default, omitted)."""
    by_name = {o.name: o for o in train_options()}
    flags: list[str] = []
    for n in names:
        opt, value = by_name[n], getattr(args, n)
        if opt.type is bool:  # BooleanOptionalAction: --x / --no-x
            flags.append(opt.flag if value else "--no-" + opt.flag[2:])
        elif value is not None:
            flags += [opt.flag, repr(value) if isinstance(value, float) else str(value)]
    return flags


def check_values(values: dict[str, Any]) -> None:
    """Range checks argparse cannot express, worded with the flags (ValueError). Run before any
    run folder or data is touched, so a bad value costs nothing."""
    decay = values.get("ema_decay")
    if decay is not None and not 0.0 <= decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {decay}")
    for name, low in (("epochs", 1), ("batch_size", 1), ("image_size", 8), ("patience", 1)):
        v = values.get(name)
        if v is not None and v < low:
            raise ValueError(f"--{name.replace('_', '-')} must be {low} or more, got {v}")
    if (values.get("conflict_every") or 0) < 0:
        raise ValueError(f"--conflict-every must be 0 or more, got {values['conflict_every']}")
