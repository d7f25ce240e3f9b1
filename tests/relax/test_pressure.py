"""A crystal measured under pressure, relaxed at that pressure: the stress balances it at the end, the cell is
smaller than at 0 GPa, and the setting is named in the hash (and only then)."""

import numpy as np
import pytest
from ase.units import GPa

from helpers.relax.engine import RelaxSettings
from helpers.relax.stage import job_settings, run_batch
from helpers.run.parameters import ParameterError, checked
from helpers.store import db as dbmod

PYRAZINE_1_16_GPA = 4516576  # cod-sample: pyrazine, _diffrn_ambient_pressure 1160000 kPa


def test_the_pressure_is_named_in_the_hash_and_only_then():
    assert RelaxSettings(potential="ani1x").hash() == RelaxSettings(potential="ani1x", pressure=None).hash()
    assert RelaxSettings(potential="ani1x", pressure="experimental").hash() != RelaxSettings(potential="ani1x").hash()
    assert job_settings("ani1x", {"pressure": "experimental"}).pressure == "experimental"
    with pytest.raises(ValueError, match="unknown pressure"):
        RelaxSettings(pressure="1 GPa")
    assert checked("03_relax", {"pressure": "None"})["pressure"] is None  # papermill passes strings
    with pytest.raises(ParameterError, match="pressure"):
        checked("03_relax", {"pressure": "experimentl"})


@pytest.fixture(scope="module")
def pyrazine_under_pressure(tmp_path_factory, shared_data):
    from helpers.fetch.stage import fetch
    from helpers.filter.stage import run_filter

    folder = tmp_path_factory.mktemp("pressure")
    fetch(source=str(shared_data / "cod-sample"), raw_db=str(folder / "raw.db"), cod_ids=[PYRAZINE_1_16_GPA],
          progress=False)
    run_filter(str(folder / "raw.db"), str(folder / "clean.db"), str(folder / "rejects.db"), progress=False)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["fast", "study"])
def test_a_crystal_relaxed_at_its_measured_pressure(pyrazine_under_pressure, strategy, model_dir):
    """Both paths (side by side and one at a time): at 1.16 GPa the relaxed cell's own pressure is 1.16 GPa
    and its volume well below the 0 GPa one; the row records the pressure."""
    folder, rows = pyrazine_under_pressure, {}
    for pressure in (None, "experimental"):
        out = str(folder / f"relaxed_{strategy}_{pressure}.db")
        run_batch(str(folder / "clean.db"), out, "ani1x", progress=False, n_threads=1,
                  settings=RelaxSettings(potential="ani1x", fmax=0.01, strategy=strategy, pressure=pressure))
        rows[pressure] = next(dbmod.connect(out).select())
    zero, squeezed = rows[None], rows["experimental"]
    assert zero.status == squeezed.status == "converged"
    assert squeezed.relax_pressure_gpa == pytest.approx(1.16) and zero.get("relax_pressure_gpa") is None
    assert -np.mean(squeezed.stress[:3]) / GPa == pytest.approx(1.16, abs=0.03)  # the stress balances it
    assert abs(np.mean(zero.stress[:3]) / GPa) < 0.03
    assert squeezed.V_relaxed < 0.95 * zero.V_relaxed and squeezed.settings_hash != zero.settings_hash
