"""Validated option fields: one declaration per option, read by the dataclass, the CLI and
config.json alike.

An option is a dataclass field made with `option(default, check, help)`.  Its `Check`
validates (and normalises) a value when the frozen dataclass is built, whatever the value
came from: a Python call, a command-line flag or a hand-edited config.json.  The CLI builds
its flags from the same fields (cupyvae.cli: `--<name>` with the check's click type and the
help text), so adding an option is adding one field.

    @dataclass(frozen=True)
    class Options(ValidatedOptions):
        lr: float = option(1e-3, positive_float, "Adam learning rate.")

    Options(lr=float("nan"))   # OptionError: lr = nan: must be a finite number > 0

Checks are strict about types, because config.json is edited by hand: "100" is not an
integer, "no" is not a boolean, 2.5 is not an integer, NaN and inf are not numbers here.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
import re
from dataclasses import dataclass
from typing import Any, Callable

import click


# Another field named in a rule, as {name}: shown as the keyword `name` by the API and as
# the flag `--name` by the command line (cupyvae.cli), so one rule reads well in both.
FIELD_REFERENCE = re.compile(r"\{([a-z][a-z0-9_]*)\}")


class OptionError(ValueError):
    """An option value that is refused; names the field, the value and the rule.

    A rule about how options combine names the other fields as {field}, e.g.
    "importance samples are for {objective} iwae (leave {iw_samples} at 1)":
    str(error) shows them as keywords (objective iwae), `rule_text(flag_name)` as the
    caller names them (the CLI: --objective iwae)."""

    def __init__(self, field: str, value: Any, rule: str, owner: str = "option"):
        self.field, self.value, self.rule = field, value, rule
        super().__init__(f"{owner} {field} = {value!r}: {self.rule_text()}")

    def rule_text(self, name: Callable[[str], str] = str) -> str:
        """The rule with every {field} written as name(field)."""
        return FIELD_REFERENCE.sub(lambda match: name(match[1]), self.rule)


@dataclass(frozen=True)
class Check:
    """`accept(value)` returns the normalised value or raises ValueError(rule);
    `click_type()` is what the CLI parses the flag with (None: a boolean --x/--no-x flag),
    built when the CLI is built, so plug-ins registered by then are choices."""
    rule: str
    accept: Callable[[Any], Any]
    click_type: Callable[[], Any] = lambda: None


def option(default, check: Check, help: str, *, cli: bool = True):
    """A dataclass field validated by `check`; `cli=False` keeps it off the command line."""
    return dataclasses.field(default=default,
                             metadata={"check": check, "help": help, "cli": cli})


class ValidatedOptions:
    """Base of the frozen option dataclasses: validates every field on construction."""
    owner = "option"

    def __post_init__(self):
        for f in dataclasses.fields(self):
            check = f.metadata.get("check")
            if check is None:
                continue
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, check.accept(value))
            except (TypeError, ValueError) as exc:
                raise OptionError(f.name, value, str(exc) or check.rule, self.owner) from None

    @classmethod
    def from_dict(cls, values: dict, where: str = ""):
        """Build from a mapping (e.g. a config.json section); unknown keys are refused."""
        if not isinstance(values, dict):
            raise ValueError(f"{where or cls.__name__} must be a JSON object, got {values!r}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"{where + ': ' if where else ''}unknown {cls.owner}s {unknown}; "
                             f"known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict:
        """JSON-ready: tuples become lists."""
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def replace(self, **changes):
        """A copy with `changes` (validated); unknown names are refused with the known ones."""
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown {self.owner}s {unknown}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **changes)


def cli_fields(cls) -> list[dataclasses.Field]:
    """The fields of `cls` that are command-line options, in declaration order."""
    return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", False)]


def _jsonable(value):
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------------- checks
def _integer(value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"must be an integer >= {minimum}")
    if value < minimum:
        raise ValueError(f"must be an integer >= {minimum}")
    return int(value)


def _number(value, minimum: float, open_min: bool, maximum: float | None = None,
            open_max: bool = False) -> float:
    rule = _range_rule(minimum, open_min, maximum, open_max)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be {rule}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"must be {rule}")
    if abs(value) > FLOAT32_MAX:   # the kernels hold these in float32, where it would be inf
        raise ValueError(f"must be {rule}, at most {FLOAT32_MAX:.7g} in size (float32's largest)")
    if value < minimum or (open_min and value == minimum):
        raise ValueError(f"must be {rule}")
    if maximum is not None and (value > maximum or (open_max and value == maximum)):
        raise ValueError(f"must be {rule}")
    return value


FLOAT32_MAX = 3.4028234663852886e38


def _range_rule(minimum, open_min, maximum, open_max) -> str:
    low = f"{'>' if open_min else '>='} {minimum:g}"
    if maximum is None:
        return f"a finite number {low}"
    high = f"{'<' if open_max else '<='} {maximum:g}"
    return f"a finite number {low} and {high}"


def _boolean(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def integer_at_least(minimum: int, maximum: int | None = None) -> Check:
    def accept(value):
        value = _integer(value, minimum)
        if maximum is not None and value > maximum:
            raise ValueError(f"must be an integer in [{minimum}, {maximum}]")
        return value
    return Check(f"must be an integer >= {minimum}", accept,
                 lambda: click.IntRange(min=minimum, max=maximum))


def check_argument(name: str, value, check: Check):
    """`value` as `check` accepts it, else OptionError naming the argument: the keyword
    arguments of API methods (n, n_samples, threads) follow the option fields' rules."""
    try:
        return check.accept(value)
    except (TypeError, ValueError) as exc:
        raise OptionError(name, value, str(exc) or check.rule, "argument") from None


def number(minimum: float = 0.0, *, open_min: bool = False, maximum: float | None = None,
           open_max: bool = False) -> Check:
    """A finite real in the given range (NaN and inf are always refused)."""
    return Check(f"must be {_range_rule(minimum, open_min, maximum, open_max)}",
                 lambda v: _number(v, minimum, open_min, maximum, open_max), lambda: click.FLOAT)


def optional(check: Check) -> Check:
    """None, or a value `check` accepts."""
    return Check(f"{check.rule} (or null)", lambda v: None if v is None else check.accept(v),
                 check.click_type)


def one_of(names: Callable[[], list[str]] | tuple[str, ...]) -> Check:
    """A string among `names`: a tuple, or a callable read at every check (e.g. a registry's
    `names`, so a distribution registered after import is accepted too)."""
    def get() -> list[str]:
        return list(names() if callable(names) else names)

    def accept(value):
        if not isinstance(value, str) or value not in get():
            raise ValueError(f"must be one of {', '.join(get())}")
        return value

    return Check("must be one of the registered names", accept, lambda: click.Choice(get()))


def registered(registry) -> Check:
    """A name in `registry` (cupyvae.registry.Registry), read at every check, so a plug-in
    registered after import is accepted too; an unknown name gets the registry's message,
    which lists the registered names."""
    def accept(value):
        if not isinstance(value, str):
            raise ValueError(f"must be a {registry.role} name ({', '.join(registry.names())})")
        registry.get(value)
        return value

    return Check(f"must be a registered {registry.role}", accept,
                 lambda: RegisteredName(registry))


class RegisteredName(click.Choice):
    """A command-line choice among a registry's names that also takes its retired aliases
    (Registry.alias; not listed among the choices): an alias becomes the current name, with
    a note on stderr, so an old command line still runs and the run records the new name.
    An unknown name gets the registry's message, with its did-you-mean suggestion."""

    def __init__(self, registry):
        self.registry = registry
        super().__init__(registry.names())

    def convert(self, value, param, ctx):
        if isinstance(value, str) and value not in self.registry:
            try:
                self.registry.get(value)
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if isinstance(value, str) and value not in self.choices and value in self.registry:
            current = self.registry.canonical(value)
            named = param.opts[0] if param is not None and param.opts else self.registry.role
            if ctx is None or not ctx.params.get("quiet"):   # --quiet is eager: already parsed
                click.echo(f"cupyvae: {named} {value} is now called {current}; using that name",
                           err=True)
            value = current
        return super().convert(value, param, ctx)


class CommaList(click.ParamType):
    """A comma-separated command-line list: `200,100` -> (200, 100); `none` or '' -> ()."""
    name = "list"

    def __init__(self, item: Callable[[str], Any], single_as_scalar: bool = False):
        self.item, self.single_as_scalar = item, single_as_scalar

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if value.strip().lower() in ("", "none"):
            return ()
        try:
            items = tuple(self.item(part.strip()) for part in value.split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list", param, ctx)
        return items[0] if self.single_as_scalar and len(items) == 1 else items


boolean = Check("must be true or false", _boolean, lambda: None)
positive_int = integer_at_least(1)
nonnegative_int = integer_at_least(0)
# Sample and row counts key Philox as uint32 counters (sample i of example n, row r of a
# step): a count beyond this would repeat noise or wrap, so it is refused up front.
UINT32_MAX = 2 ** 32 - 1
sample_count = integer_at_least(1, UINT32_MAX)
positive_float = number(0.0, open_min=True)
nonnegative_float = number(0.0)
