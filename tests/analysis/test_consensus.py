"""Consensus outliers (helpers.analysis.consensus): a fixed errors table recomputed by hand, and a relaxed
row whose bond graph changed recorded as such through the real analysis path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from helpers.analysis.consensus import consensus_outliers, ids_by_reason, with_and_without

POTENTIALS = ("p1", "p2", "p3", "p4")


def _table() -> pd.DataFrame:
    """Six crystals x four potentials; every number chosen so the verdict can be worked out by hand."""
    dv = {  # ΔV % per potential (p1..p4)
        "S1": (15.0, 12.0, 11.0, 2.0),    # 3 of 4 far up: 3 >= ceil(2/3 * 4) = 3 and >= 3 -> volume_consensus
        "S2": (15.0, 12.0, -11.0, 2.0),   # 2 up, 1 down: no
        "S3": (-20.0, -15.0, -12.0, -30.0),  # p4 did not converge: 3 of 3 converged far down -> listed
        "S4": (1.0, -1.0, 0.5, 2.0),      # bonds changed for p1 and p2: 2 >= ceil(0.5 * 4) -> chemistry_changed
        "S5": (3.0, 4.0, 2.0, 1.0),       # the filter flagged a bond length -> filter_flagged
        "S6": (-2.0, -3.0, -1.0, 0.0),    # the largest start force of every potential -> start_extreme
    }
    rows = []
    for k, (sid, values) in enumerate(dv.items()):
        for j, (p, v) in enumerate(zip(POTENTIALS, values)):
            rows.append({
                "structure_id": sid, "potential": p, "dV_pct": v,
                "converged": not (sid == "S3" and p == "p4"),
                "bonds_intact": not ((sid == "S4" and p in ("p1", "p2")) or (sid == "S2" and p == "p1")),
                "bond_changes": "broken O-O x2" if sid == "S4" and p in ("p1", "p2") else "",
                "filter_flags": "bond_length_outlier,no_temperature" if sid == "S5" else
                ("no_temperature" if sid == "S2" else None),
                "start_fmax": 50.0 + j if sid == "S6" else 1.0 + k + 0.1 * j,
            })
    return pd.DataFrame(rows)


def test_consensus_list_by_hand():
    listed = consensus_outliers(_table())
    assert list(listed["structure_id"]) == ["S1", "S3", "S4", "S5", "S6"]
    reasons = dict(zip(listed["structure_id"], listed["reasons"]))
    assert reasons == {"S1": "volume_consensus", "S3": "volume_consensus", "S4": "chemistry_changed",
                       "S5": "filter_flagged", "S6": "start_extreme"}
    s1 = listed.set_index("structure_id").loc["S1"]
    assert (s1.n_far_up, s1.n_far_down, s1.n_converged, s1.median_dV_pct) == (3, 0, 4, 11.5)
    s3 = listed.set_index("structure_id").loc["S3"]
    assert (s3.n_far_down, s3.n_converged, s3.median_dV_pct) == (3, 3, -15.0)
    assert listed.set_index("structure_id").loc["S4", "bond_changes"] == "p1: broken O-O x2; p2: broken O-O x2"
    assert ids_by_reason(listed) == {"volume_consensus": ["S1", "S3"], "chemistry_changed": ["S4"],
                                     "filter_flagged": ["S5"], "start_extreme": ["S6"]}
    # stricter: all potentials must agree -> S1 (3 of 4) drops out, S3 (3 of 3 converged) stays
    strict = consensus_outliers(_table(), agree_fraction=1.0)
    assert "S1" not in set(strict["structure_id"]) and "S3" in set(strict["structure_id"])


def test_a_potential_unfit_for_crystals_casts_no_vote():
    """AIMNet2 (docs/aimnet2.md), here contracting every crystal by 20 %: counted, it would outvote S1 (3 of 5 far
    up < ceil(2/3 · 5)) and veto S6 (its smallest start force); as a potential unfit for crystals it casts no vote."""
    table = _table()
    aimnet = table[table.potential == "p4"].assign(potential="aimnet2", dV_pct=-20.0)
    aimnet["start_fmax"] = np.arange(len(aimnet), 0, -1.0)  # S6 its smallest start force
    listed = consensus_outliers(pd.concat([table, aimnet]))
    alone = consensus_outliers(table)
    assert dict(zip(listed["structure_id"], listed["reasons"])) == dict(zip(alone["structure_id"], alone["reasons"]))
    assert "aimnet2" not in " ".join(listed["dV_by_potential"])
    voted = set(consensus_outliers(pd.concat([table, aimnet]), ignore=())["structure_id"])
    assert "S1" not in voted and "S6" not in voted


def test_headline_numbers_with_and_without_by_hand():
    effect = with_and_without(_table(), consensus_outliers(_table())).set_index(["potential", "subset"])
    # p1, converged: 15, 15, -20, 1, 3, -2 -> median 2.0; without S1, S3, S4, S5, S6 only S2 (15) is left
    assert effect.loc[("p1", "all"), "n"] == 6 and effect.loc[("p1", "all"), "median"] == pytest.approx(2.0)
    assert effect.loc[("p1", "without_listed"), "n"] == 1
    assert effect.loc[("p1", "without_listed"), "median"] == pytest.approx(15.0)
    assert effect.loc[("p1", "all"), "frac_above"] == pytest.approx(2 / 6)
    # p4: S3 did not converge -> 5 values (2, 2, 2, 1, 0); without volume_consensus (S1, S3) -> 2, 2, 1, 0
    assert effect.loc[("p4", "all"), "n"] == 5
    assert effect.loc[("p4", "without_volume_consensus"), "n"] == 4
    assert effect.loc[("p4", "without_volume_consensus"), "median"] == pytest.approx(np.median([2.0, 2.0, 1.0, 0.0]))


def test_a_relaxation_that_breaks_a_bond_is_recorded(small_clean_db, tmp_path):
    """COD 2000642 (real, clean): a 'relaxed' structure whose first X-H hydrogen left its atom (moved 1.2 Å
    further out along the bond) goes through the real relaxed-row writer and the analysis: bonds_intact
    False, the broken bond named, the crystal listed as chemistry_changed."""
    from ase.neighborlist import neighbor_list

    from helpers.analysis.stage import collect_errors
    from helpers.relax.engine import RelaxResult, RelaxSettings
    from helpers.relax.stage import write_result
    from helpers.store import db as dbmod

    clean = dbmod.connect(small_clean_db)
    row = clean.get(structure_id="cod-2000642")
    atoms = row.toatoms()
    i, j, d, D = neighbor_list("ijdD", atoms, 1.2)
    xh = [(a, b, vec) for a, b, vec in zip(i, j, D) if atoms[a].symbol != "H" and atoms[b].symbol == "H"]
    assert xh, "2000642 has X-H bonds"
    x, h, vec = xh[0]
    pair = "-".join(sorted((atoms[x].symbol, "H")))
    broken = atoms.copy()
    broken.positions[h] += 1.2 * vec / np.linalg.norm(vec)
    from ase.calculators.singlepoint import SinglePointCalculator

    broken.calc = SinglePointCalculator(broken, energy=-1.0, forces=np.zeros((len(broken), 3)))
    settings = RelaxSettings(potential="ani1x").resolved(6)
    result = RelaxResult(atoms=broken, status="converged", converged=True, steps=10, max_steps=100, e_initial=0.0,
                         e_final=-1.0, fmax_final=1e-4, wall_time=1.0, extra={"start_fmax": 9.0})
    out = str(tmp_path / "relaxed.db")
    write_result(dbmod.connect(out), row, result, settings, settings.hash())
    errors = collect_errors(out, small_clean_db, structure=True)
    rec = errors.iloc[0]
    assert rec.bonds_intact is False or str(rec.bonds_intact) == "False"
    assert rec.bonds_broken >= 1 and f"broken {pair} x1" in rec.bond_changes
    assert rec.start_fmax == 9.0
    listed = consensus_outliers(errors)
    assert list(listed["structure_id"]) == ["cod-2000642"] and listed.iloc[0]["reasons"] == "chemistry_changed"


def test_a_family_votes_once():
    """Four ANI models contracting a crystal by 15 % are one witness: against SevenNet-0-d3 and CHGNet-d3 (not far)
    they are 1 family of 3, not 4 potentials of 6; with one of the others agreeing, 2 of 3 families list it.
    A family votes as more than half of its converged members: 2 of 4 ANI models far is no vote."""
    ani, others = ("ani1x", "ani1x-d3", "ani1ccx-d3", "ani2x-d3"), ("sevennet0-d3", "chgnet-d3")
    dv = {"S7": (-15, -15, -15, -15, -2, -3),   # ANI alone: 1 of 3 families (it was 4 of 6 potentials: listed)
          "S8": (15, 15, 15, 15, 12, 2),       # ANI and SevenNet: 2 of 3 families -> listed
          "S9": (15, 15, 2, 2, 12, 11)}        # ANI split 2 / 4: no vote; SevenNet, CHGNet: 2 of 3 -> listed
    table = pd.DataFrame([{"structure_id": sid, "potential": p, "dV_pct": float(v), "converged": True}
                          for sid, values in dv.items() for p, v in zip(ani + others, values)])
    listed = consensus_outliers(table).set_index("structure_id")
    assert list(listed.index) == ["S8", "S9"]
    assert tuple(listed.loc["S8", ["n_families", "n_families_up", "n_far_up"]]) == (3, 2, 5)
    assert tuple(listed.loc["S9", ["n_families", "n_families_up", "n_far_up"]]) == (3, 2, 4)
    # one potential one vote (each its own family): S7 is back, 4 of 6 far down
    alone = {p: p for p in ani + others}
    assert "S7" in set(consensus_outliers(table, families=alone)["structure_id"])


def test_a_family_breaks_a_bond_once():
    """Three ANI models breaking the same bond are one family of two: with SevenNet-0-d3 keeping it, 1 of 2
    families (≥ half) lists the crystal; one ANI model of three breaking it is no family's verdict."""
    rows = [{"structure_id": sid, "potential": p, "dV_pct": 0.0, "converged": True, "bonds_intact": intact}
            for sid, flags in {"S10": (False, False, False, True), "S11": (False, True, True, True)}.items()
            for p, intact in zip(("ani1x", "ani1ccx", "ani2x", "sevennet0-d3"), flags)]
    listed = consensus_outliers(pd.DataFrame(rows))
    assert list(listed["structure_id"]) == ["S10"] and listed["reasons"].iloc[0] == "chemistry_changed"
