"""Potentials by name: each one's card (``cards/<name>.toml``) holds the study's step-cap factor, the elements
it covers, its citation, ...; its factory (:mod:`.factories`) builds a float64 ASE calculator."""

from helpers.relax.potentials.card import Potential
from helpers.relax.potentials.registry import REGISTRY, get_potential, register

__all__ = ["REGISTRY", "Potential", "get_potential", "register"]
