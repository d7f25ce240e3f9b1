"""Potentials by name: each registry entry builds a float64 ASE calculator and carries the study's
step-cap factor, the elements it covers and its citation."""

from helpers.relax.potentials.registry import REGISTRY, Potential, get_potential, register

__all__ = ["REGISTRY", "Potential", "get_potential", "register"]
