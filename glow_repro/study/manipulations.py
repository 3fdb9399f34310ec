"""The attribute manipulations a study asks for (``manipulations:``; Glow, section 5.3), made
once its runs finish, so that the report, which never loads a model, can show them.

For each variant, its finished run of the lowest seed is loaded with its evaluation weights (as
``glow-repro sample`` does); for each requested attribute the direction is the mean latent of
the positives minus that of the negatives among the first :data:`ENCODED_IMAGES` training
images, its separation is measured on the first :data:`ENCODED_IMAGES` test images, and the
first :data:`ROWS` test images are moved along it (:func:`glow_repro.run.manipulation.write_manipulation`).
Only the attribute's positives and negatives are encoded: for ``Sneaker-vs-Sandal`` on
Fashion-MNIST about 200 images per split. Written as::

    results/<study>/manipulations/<variant>/manipulate_<attribute>.figure.png  labelled: rows test images,
                                                                    columns the original, then alphas
    results/<study>/manipulations/<variant>/manipulate_<attribute>.png         its native grid (docs/images.md)
    results/<study>/manipulations/<variant>/manipulate_<attribute>.json        norm, separation, run

A record that already names the run is kept: a finished run does not change.
"""

from __future__ import annotations

from pathlib import Path

from glow_repro.core.data import load_split
from glow_repro.run.manipulation import write_manipulation
from glow_repro.run.rundir import RunState, StudyDir, UnreadableFileError, read_json
from glow_repro.run.sampling import file_safe, load_trained_model
from glow_repro.study.spec import RunSpec, StudySpec, expand

#: Training images the direction is taken over, and test images its separation is measured on.
ENCODED_IMAGES = 1000
#: Test images moved along each direction (rows of the figure).
ROWS = 4
LIMITS = ("train_limit", "test_limit")


def chosen_runs(spec: StudySpec, results_dir: Path) -> list[RunSpec]:
    """Per variant (in study order), its finished run of the lowest seed; variants with no
    finished run are left out."""
    runs = expand(spec)
    chosen: dict[str, RunSpec] = {}
    for run in sorted(runs, key=lambda run: run.seed):
        if run.variant not in chosen and StudyDir(results_dir).run(run.run_id).state() == RunState.DONE:
            chosen[run.variant] = run
    return [chosen[variant] for variant in dict.fromkeys(run.variant for run in runs) if variant in chosen]


def write_study_manipulations(spec: StudySpec, results_dir: str | Path) -> list[Path]:
    """Write the manipulations ``spec`` asks for (see the module docstring); the JSON records
    written now, none when the study asks for none."""
    study = StudyDir(results_dir)
    written = []
    for run in chosen_runs(spec, study.path) if spec.manipulations else ():
        out = study.manipulation(file_safe(run.variant))
        todo = [a for a in spec.manipulations if not _recorded(out / f"manipulate_{file_safe(a)}.json", run)]
        if not todo:
            continue
        config, model = load_trained_model(study.run(run.run_id).path)
        limits = {key: min(getattr(config.data, key) or ENCODED_IMAGES, ENCODED_IMAGES) for key in LIMITS}
        data = config.data.model_copy(update=limits)
        train, test = load_split(data, "train"), load_split(data, "test")
        about = {"variant": run.variant, "run_id": run.run_id, "seed": run.seed, "image_limit": ENCODED_IMAGES}
        for attribute in todo:
            write_manipulation(model, config, out, train, test, attribute, rows=ROWS, about=about)
            written.append(out / f"manipulate_{file_safe(attribute)}.json")
    return written


def _recorded(path: Path, run: RunSpec) -> bool:
    """Whether ``path`` is a readable record of ``run`` (an unreadable one is written again)."""
    try:
        return read_json(path, default={}, expect=dict).get("run_id") == run.run_id
    except UnreadableFileError:
        return False
