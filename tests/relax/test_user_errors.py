"""User mistakes end with a message that names the thing that is wrong and says what to do."""

from __future__ import annotations

import shutil

import pytest

from helpers.store import db as dbmod


def test_missing_database_is_named(tmp_path):
    missing = tmp_path / "typo" / "clean.db"
    with pytest.raises(FileNotFoundError) as info:
        dbmod.connect(missing, must_exist=True)
    message = str(info.value)
    assert str(missing) in message and "does not exist" in message and "previous notebook" in message
    assert not missing.exists() and not missing.parent.exists(), "a typo must not create an empty database"


def test_run_filter_on_missing_raw_db(tmp_path):
    from helpers.filter.stage import run_filter

    raw = tmp_path / "raw.db"
    with pytest.raises(FileNotFoundError, match="raw.db does not exist"):
        run_filter(str(raw), str(tmp_path / "clean.db"), str(tmp_path / "rejects.db"), progress=False)
    assert not raw.exists()


def test_run_batch_on_missing_clean_db(tmp_path):
    from helpers.relax.stage import run_batch

    clean = tmp_path / "clean.db"
    with pytest.raises(FileNotFoundError, match="clean.db does not exist"):
        run_batch(str(clean), str(tmp_path / "relaxed.db"), "ani1x", progress=False)
    assert not clean.exists()
    assert not (tmp_path / "relaxed.db").exists(), "nothing is written before the input is found"


def test_unknown_potential_lists_the_known_ones():
    from helpers.relax.potentials.registry import REGISTRY, get_potential

    with pytest.raises(KeyError) as info:
        get_potential("ani3x")
    message = str(info.value)
    assert "unknown potential 'ani3x'" in message
    for name in REGISTRY:
        assert name in message


def test_run_batch_with_unknown_potential_fails_before_work(small_clean_db, tmp_path):
    from helpers.relax.stage import run_batch

    with pytest.raises(KeyError, match="unknown potential 'ANI-1x'.*ani1x"):
        run_batch(small_clean_db, str(tmp_path / "relaxed.db"), "ANI-1x", progress=False)
    assert not (tmp_path / "relaxed.db").exists()


@pytest.mark.parametrize(("batch", "n_batches"), [(5, 2), (2, 2), (-1, 2)])
def test_bad_batch_index(small_clean_db, tmp_path, batch, n_batches):
    from helpers.relax.stage import run_batch

    with pytest.raises(ValueError) as info:
        run_batch(small_clean_db, str(tmp_path / "relaxed.db"), "ani1x", batch=batch, n_batches=n_batches,
                  progress=False)
    message = str(info.value)
    assert f"batch must be in 0..{n_batches - 1}" in message and f"got {batch}" in message


def test_zero_batches(small_clean_db, tmp_path):
    from helpers.relax.stage import run_batch

    with pytest.raises(ValueError, match="n_batches must be >= 1, got 0"):
        run_batch(small_clean_db, str(tmp_path / "relaxed.db"), "ani1x", batch=0, n_batches=0, progress=False)


def test_model_dir_without_any_files(tmp_path, monkeypatch):
    from helpers.relax.potentials.ani import ModelFilesError, load_ani

    monkeypatch.setenv("ANI_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelFilesError) as info:
        load_ani("ani1x")
    message = str(info.value)
    assert f"ANI_MODEL_DIR={tmp_path}" in message and "ani-1x_8x.info" in message
    assert "point ANI_MODEL_DIR" in message, "the message says what to do"


def test_model_dir_that_does_not_exist(tmp_path, monkeypatch):
    from helpers.relax.potentials.ani import ModelFilesError, load_ani

    monkeypatch.setenv("ANI_MODEL_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(ModelFilesError, match="does not exist"):
        load_ani("ani1x")


def test_model_dir_with_info_but_without_weights(tmp_path, monkeypatch, model_dir):
    """The .info, constants and self energies are there, the networks' weight files are not."""
    from helpers.relax.potentials.ani import ModelFilesError, load_ani

    shutil.copy(model_dir / "ani-1x_8x.info", tmp_path)
    (tmp_path / "ani-1x_8x").mkdir()
    for f in (model_dir / "ani-1x_8x").iterdir():
        if f.is_file():
            shutil.copy(f, tmp_path / "ani-1x_8x")
    for i in range(8):
        (tmp_path / "ani-1x_8x" / f"train{i}" / "networks").mkdir(parents=True)
    monkeypatch.setenv("ANI_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelFilesError) as info:
        load_ani("ani1x")
    message = str(info.value)
    assert "weights" in message and "train0" in message and "ANN-" in message
    assert "point ANI_MODEL_DIR" in message


def test_model_dir_without_ensemble_members(tmp_path, monkeypatch, model_dir):
    from helpers.relax.potentials.ani import ModelFilesError, load_ani

    shutil.copy(model_dir / "ani-1x_8x.info", tmp_path)
    (tmp_path / "ani-1x_8x").mkdir()
    monkeypatch.setenv("ANI_MODEL_DIR", str(tmp_path))
    with pytest.raises(ModelFilesError) as info:
        load_ani("ani1x")
    message = str(info.value)
    assert "NeuroChem files missing" in message and "train0" in message
