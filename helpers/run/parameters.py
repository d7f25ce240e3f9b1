"""Check and coerce the notebooks' parameters before anything runs.

papermill passes command-line values (``-p name value``) as strings unless they look like a number,
``True``, ``False`` or ``None``: ``-p fix_symmetry false`` arrives as the truthy string ``'false'``,
``-p elements C,H,N,O`` as one string. Each notebook's second cell calls :func:`checked`, which turns
such values into what the parameter means or stops with a message naming the parameter.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable, Mapping
from typing import Any

from helpers.vocabulary import FALSE_WORDS, NO_HESSIAN_SEED, SAMPLE_SETS, TRUE_WORDS

Coerce = Callable[[Any], Any]

_TRUE, _FALSE = TRUE_WORDS, FALSE_WORDS
_NONE = {"none", "null", ""}


class ParameterError(ValueError):
    """A notebook parameter that cannot mean anything sensible."""


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in _NONE)


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TypeError("true or false")


def integer(minimum: int | None = None) -> Coerce:
    def coerce(value: Any) -> int:
        if isinstance(value, bool):
            raise TypeError("a whole number")
        if isinstance(value, str):
            value = value.strip()
        try:
            number = int(value) if not isinstance(value, float) or value.is_integer() else None
        except (TypeError, ValueError):
            number = None
        if number is None:
            raise TypeError("a whole number")
        if minimum is not None and number < minimum:
            raise TypeError(f"a whole number ≥ {minimum}")
        return number
    return coerce


def number(minimum: float | None = None, strict: bool = False) -> Coerce:
    def coerce(value: Any) -> float:
        if isinstance(value, bool):
            raise TypeError("a number")
        try:
            x = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise TypeError("a number") from None
        if x != x or x in (float("inf"), float("-inf")):
            raise TypeError("a finite number")
        if minimum is not None and (x <= minimum if strict else x < minimum):
            raise TypeError(f"a number {'>' if strict else '≥'} {minimum:g}")
        return x
    return coerce


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TypeError("a non-empty string")
    return value


def choice(*options: Any) -> Coerce:
    def coerce(value: Any) -> Any:
        for option in options:
            if value == option or (option is None and _is_none(value)):
                return option
        raise TypeError(f"one of {', '.join(repr(o) for o in options)}")
    return coerce


def optional(inner: Coerce) -> Coerce:
    def coerce(value: Any) -> Any:
        return None if _is_none(value) else inner(value)
    coerce.__name__ = f"optional_{getattr(inner, '__name__', 'value')}"
    return coerce


def sequence(item: Coerce, what: str = "a list", length: int | None = None) -> Coerce:
    """A list from a list/tuple, a Python literal (``"[1, 2]"``, ``"(150, 250)"``) or ``"a,b,c"``."""
    def coerce(value: Any) -> list:
        if isinstance(value, str):
            try:
                literal = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                literal = None
            if isinstance(literal, (list, tuple)):
                value = list(literal)
            elif isinstance(literal, (int, float)) and not isinstance(literal, bool):
                value = [literal]
            else:
                value = [part for part in value.replace(";", ",").replace(" ", ",").split(",") if part]
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise TypeError(what)
        items = [item(v) for v in value]
        if length is not None and len(items) != length:
            raise TypeError(f"{what} of {length}")
        return items
    return coerce


def element(value: Any) -> str:
    from ase.data import chemical_symbols

    symbol = str(value).strip()
    if symbol not in chemical_symbols[1:]:
        raise TypeError("element symbols such as C, H, N, O")
    return symbol


def increasing(values: list[float]) -> tuple[float, ...]:
    if any(b <= a for a, b in zip(values, values[1:])):
        raise TypeError("increasing numbers")
    return tuple(values)


def _then(first: Coerce, second: Callable[[Any], Any]) -> Coerce:
    return lambda value: second(first(value))


def _or_off(inner: Coerce) -> Coerce:
    """:data:`NO_HESSIAN_SEED` kept as it is (a default switched off), anything else through ``inner``."""
    def coerce(value: Any) -> Any:
        off = isinstance(value, str) and value.strip().lower() == NO_HESSIAN_SEED
        return NO_HESSIAN_SEED if off else inner(value)
    coerce.__name__ = f"{getattr(inner, '__name__', 'value')}_or_off"
    return coerce


def potential_name(value: Any) -> str:
    from helpers.relax.potentials.registry import REGISTRY

    name = text(value).strip()
    if name not in REGISTRY:  # a plug-in's potential registers when the entry points load
        from helpers.relax.potentials.registry import load_plugins

        load_plugins()
    if name not in REGISTRY:
        raise TypeError(f"a registered potential ({', '.join(sorted(REGISTRY))})")
    return name


def compound_rule(value: Any) -> Any:
    """04_analysis's ``one_per_compound``: a rule such as "r_factor,temperature", or None to switch off."""
    from helpers.analysis.compounds import parse_rule

    try:
        parse_rule(value)
    except ValueError as err:
        raise TypeError(str(err).removeprefix("one_per_compound")) from None
    return value


def database(value: Any) -> str:
    return text(value).strip()


ELEMENTS = optional(sequence(element, "a list of element symbols"))


def atom_limits(value: Any) -> dict[str, int | None]:
    """04_analysis's ``max_atoms``: potential -> largest structure (atoms it evaluates), None for no limit."""
    value = _mapping(value, '{"gfn-ff": 60}')
    limit = optional(integer(1))
    return {text(name): limit(n) for name, n in value.items()}


def keyword_options(value: Any) -> dict[str, Any]:
    """03_relax's ``calculator_options``: keyword arguments of the potential's calculator, by name (a mapping,
    or its JSON text as papermill's ``-p`` passes it)."""
    return {text(name): v for name, v in _mapping(value, '{"min_width": 0}').items()}


def _mapping(value: Any, example: str) -> Mapping:
    """``value`` as a mapping: given as one, or as its JSON text (papermill's ``-p`` passes text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise TypeError(f"a mapping such as {example}") from None
    if not isinstance(value, Mapping):
        raise TypeError(f"a mapping such as {example}")
    return value

#: what each notebook parameter may be; tests/run/test_notebooks.py checks these match the notebooks
SPECS: dict[str, dict[str, Coerce]] = {
    "01_fetch": {
        "source": optional(lambda v: [text(x) for x in v] if isinstance(v, (list, tuple)) and v else text(v)),
        "raw_db": database, "elements": ELEMENTS,
        "cod_ids": optional(sequence(integer(1), "a list of COD ids")), "limit": optional(integer(0)),
        "n_workers": optional(integer(1)),
    },
    "02_filter": {
        "raw_db": database, "clean_db": database, "rejects_db": database,
        "min_distance": number(0.0, strict=True), "elements": ELEMENTS, "n_workers": optional(integer(1)),
        "require_formula": boolean, "reader": choice("ase", "pymatgen"), "group_duplicates": boolean,
    },
    "03_relax": {
        "potential": potential_name, "batch": integer(0), "n_batches": integer(1), "clean_db": database,
        "out_db": database, "fmax": number(0.0, strict=True), "max_steps_base": integer(0),
        "steps_per_atom": optional(integer(0)), "strategy": choice("fast", "study"),
        "draft": choice("float32", None), "optimizer": choice("BFGS", "LBFGS", "FIRE", "PreconLBFGS"),
        "cell_filter": choice("frechet", "fixed"), "fix_symmetry": boolean, "hydrostatic": boolean,
        "max_wall_time": optional(number(0.0, strict=True)), "trajectory_dir": optional(text),
        "limit": optional(integer(0)), "n_threads": optional(integer(1)), "max_atoms": optional(integer(1)),
        "checkpoint_every": number(0.0), "hessian_seed": optional(_or_off(potential_name)),
        "hessian_seed_floor": number(0.0, strict=True), "sample": optional(choice(*SAMPLE_SETS)),
        "pressure": choice("experimental", None), "calculator_options": optional(keyword_options),
    },
    "04_analysis": {
        "relaxed_dbs": lambda v: v if isinstance(v, (list, tuple)) and v else text(v),
        "clean_db": optional(database), "out_dir": text, "converged_only": boolean,
        "alpha_v": number(0.0), "t_ref": number(0.0), "threshold_pct": number(0.0, strict=True),
        "temperature_edges": _then(sequence(number(0.0), "a list of temperatures in K"), increasing),
        "structure": boolean, "matcher": boolean, "one_per_compound": compound_rule, "n_boot": integer(0),
        "boot_seed": integer(0),
        "settings_hashes": optional(sequence(text, "a list of settings hashes")),
        "max_atoms": optional(atom_limits), "backfill_start_tells": boolean,
    },
    "05_lattice_energy": {
        "potential": potential_name, "benchmarks": sequence(choice("x23", "ice13"), "a list of x23, ice13"),
        "out_db": database, "out_csv": optional(text), "fmax": number(0.0, strict=True),
        "max_steps_base": integer(0), "steps_per_atom": optional(integer(0)), "geometry": choice("relaxed", "fixed"),
        "crystals": optional(sequence(text, "a list of crystal names of the .din files")),
        "start_db": optional(database), "max_wall_time": optional(number(0.0, strict=True)),
        "n_threads": optional(integer(1)), "reference_dir": optional(text),
    },
    "06_minimum_check": {
        "potential": potential_name, "relaxed_db": database, "minima_db": database, "settings_hash": optional(text),
        "sample": optional(choice(*SAMPLE_SETS)), "batch": integer(0), "n_batches": integer(1), "seed": integer(0),
        "limit": optional(integer(0)), "n_threads": optional(integer(1)),
    },
}


def checked(notebook: str, namespace: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of ``notebook`` found in ``namespace``, coerced; :class:`ParameterError` otherwise.

    Use in a notebook: ``globals().update(checked("03_relax", globals()))``.
    """
    specs = SPECS[notebook]
    out: dict[str, Any] = {}
    problems = []
    for name, coerce in specs.items():
        if name not in namespace:
            continue
        value = namespace[name]
        try:
            out[name] = coerce(value)
        except TypeError as err:
            problems.append(f"{name} = {value!r}: expected {err}")
    if problems:
        raise ParameterError(f"{notebook}: bad parameter{'s' if len(problems) > 1 else ''}: " + "; ".join(problems))
    return out
