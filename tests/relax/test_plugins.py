"""Bring your own potential: the ``codani.potentials`` entry point group and the model-file form.

The plugin here is a real installed distribution as far as ``importlib.metadata`` can tell: a
``*.dist-info`` folder with ``entry_points.txt`` and a module, on ``sys.path`` for the test (and on
``PYTHONPATH`` for the command-line check). Its potential is a Lennard-Jones calculator written in the
test; what is tested is the plumbing (discovery, lazy loading, errors), not the physics.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import ase.io
import pytest
from ase.db import connect

from helpers.relax.engine import RelaxSettings
from helpers.relax.potentials import plugins
from helpers.relax.potentials.registry import REGISTRY, get_potential, load_plugins, potentials_table
from helpers.relax.stage import run_batch
from helpers.vocabulary import Status

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PLUGIN = textwrap.dedent('''
    """A third-party package offering potentials to codani (written by the test)."""
    import json
    from ase.calculators.lj import LennardJones
    from helpers.relax.potentials.registry import Potential
    from helpers.relax.potentials.plugins import model_file_potential

    def _lj(**options):
        return LennardJones(sigma=2.0, epsilon=0.005, rc=5.0, smooth=True, **options)

    TOY = Potential("toy-lj", _lj, frozenset("HCNO"), 4, "the test itself", "Lennard-Jones toy",
                    licence="CC0", source="tests/relax/test_plugins.py", cost="nothing")

    def _from_file(path, **options):
        params = json.loads(path.read_text())
        return LennardJones(rc=5.0, smooth=True, **params, **options)

    def file_potentials():
        return [model_file_potential("toy-file", _from_file, "toy-lj.json", "https://example.org/toy-lj.json",
                                     elements="HCNO", steps_per_atom=4, citation="the test itself",
                                     licence="CC0")]

    TAKEN = Potential("ani1x", _lj, frozenset("HCNO"), 4, "an impostor")
    ''')

ENTRY_POINTS = textwrap.dedent("""
    [codani.potentials]
    toy-lj = toy_codani_plugin:TOY
    toy-file = toy_codani_plugin:file_potentials
    impostor = toy_codani_plugin:TAKEN
    broken = toy_codani_plugin:DOES_NOT_EXIST
    exits = toy_codani_exit:POTENTIAL
    """)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """An installed-looking distribution ``toy-codani-plugin`` on sys.path; the registry restored after."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "toy_codani_plugin.py").write_text(PLUGIN)
    (site / "toy_codani_exit.py").write_text("import sys\nsys.exit(3)\n")  # a plugin that ends the process
    info = site / "toy_codani_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-codani-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    before = dict(REGISTRY)
    loaded = set(plugins._loaded)
    yield site
    REGISTRY.clear()
    REGISTRY.update(before)
    plugins._loaded.clear()
    plugins._loaded.update(loaded)
    sys.modules.pop("toy_codani_plugin", None)
    sys.modules.pop("toy_codani_exit", None)


def test_entry_point_potentials_load_lazily_and_broken_ones_are_reported(plugin_dir):
    assert "toy-lj" not in REGISTRY  # nothing is imported until a name is missed or the table is shown
    with pytest.warns(plugins.PluginWarning) as caught:
        pot = get_potential("toy-lj")
    assert pot.description == "Lennard-Jones toy" and "toy-file" in REGISTRY
    messages = " | ".join(str(w.message) for w in caught)
    assert "'broken'" in messages and "failed to load" in messages and "toy-codani-plugin" in messages
    assert "'ani1x' is already registered" in messages
    assert "'exits'" in messages and "SystemExit" in messages  # sys.exit at import: a warning, not the end
    assert REGISTRY["ani1x"].citation != "an impostor"  # built-ins win
    assert load_plugins() == []  # idempotent: nothing new, no second round of warnings
    assert {"toy-lj", "toy-file"} <= {r["name"] for r in potentials_table()}


def test_a_plugin_potential_relaxes_a_real_crystal_through_the_stage(plugin_dir, tmp_path, shared_data):
    atoms = ase.io.read(shared_data / "cod-sample" / "1010060.cif")
    clean = str(tmp_path / "clean.db")
    with connect(clean) as db:
        db.write(atoms, structure_id="co2", V_exp=atoms.get_volume())
    settings = RelaxSettings(potential="toy-lj", fmax=0.05, max_steps_base=50, steps_per_atom=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", plugins.PluginWarning)
        report = run_batch(clean, str(tmp_path / "out.db"), "toy-lj", settings=settings, progress=False,
                           n_threads=1)
    (row,) = report.rows
    assert row["status"] in (Status.converged, Status.step_cap) and row["steps"] > 0
    assert connect(report.out_db).get(structure_id="co2").potential == "toy-lj"


def test_model_file_missing_says_what_and_where_to_get_it(plugin_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(plugins.MODEL_DIR_ENV, str(tmp_path / "models"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", plugins.PluginWarning)
        pot = get_potential("toy-file")
    assert "https://example.org/toy-lj.json" in pot.source
    with pytest.raises(plugins.ModelFileMissing) as err:
        pot.calculator()
    text = str(err.value)
    assert "'toy-file'" in text and "toy-lj.json" in text and "https://example.org/toy-lj.json" in text
    assert str(tmp_path / "models" / "toy-lj.json") in text and plugins.MODEL_DIR_ENV in text
    assert "model_file" in text  # the per-run alternative is named too

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "toy-lj.json").write_text(json.dumps({"sigma": 2.0, "epsilon": 0.01}))
    assert pot.calculator().parameters.epsilon == 0.01
    other = tmp_path / "elsewhere.json"
    other.write_text(json.dumps({"sigma": 2.0, "epsilon": 0.02}))
    assert pot.calculator(model_file=str(other)).parameters.epsilon == 0.02
    with pytest.raises(plugins.ModelFileMissing, match="nowhere.json"):
        pot.calculator(model_file=str(tmp_path / "nowhere.json"))


def test_a_model_file_potential_is_known_by_its_weights_content_not_their_path(plugin_dir, tmp_path, monkeypatch,
                                                                              shared_data):
    """Rows carry the file's sha256; other weights at the same path are not counted as done, the same weights
    at another path are (issue 32, item 1)."""
    import hashlib

    monkeypatch.setenv(plugins.MODEL_DIR_ENV, str(tmp_path / "models"))
    (tmp_path / "models").mkdir()
    weights = tmp_path / "models" / "toy-lj.json"
    weights.write_text(json.dumps({"sigma": 2.0, "epsilon": 0.005}))
    atoms = ase.io.read(shared_data / "cod-sample" / "1010060.cif")
    clean = str(tmp_path / "clean.db")
    with connect(clean) as db:
        db.write(atoms, structure_id="co2", V_exp=atoms.get_volume())
    settings = RelaxSettings(potential="toy-file", fmax=0.05, max_steps_base=20, steps_per_atom=0)

    def job(**options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", plugins.PluginWarning)
            return run_batch(clean, str(tmp_path / "out.db"), "toy-file", settings=settings, progress=False,
                             n_threads=1, calculator_options=options or None)

    first = job()
    row = connect(first.out_db).get(structure_id="co2")
    assert row.model_file_sha256 == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert job().skipped_done == 1
    copy = tmp_path / "copy-of-the-same-weights.json"
    copy.write_bytes(weights.read_bytes())
    assert job(model_file=str(copy)).skipped_done == 1  # the same weights elsewhere: done
    weights.write_text(json.dumps({"sigma": 2.0, "epsilon": 0.02}))  # new weights, same path
    second = job()
    assert second.skipped_done == 0 and second.settings_hash != first.settings_hash
    assert connect(second.out_db).count(settings_hash=second.settings_hash, model_file_sha256=hashlib.sha256(
        weights.read_bytes()).hexdigest()) == 1


def test_cli_lists_an_installed_plugin(plugin_dir):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin_dir), ROOT])}
    out = subprocess.run([sys.executable, "-W", "ignore", "-m", "helpers.cli", "potentials"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    line = next(line for line in out.splitlines() if line.strip().startswith("toy-lj "))
    assert "tests/relax/test_plugins.py" in line and "CC0" in line
    assert "toy-file" in out and "gfn2-xtb" in out
