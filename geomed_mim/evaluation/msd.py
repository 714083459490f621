"""CT segmentation on a Medical Segmentation Decathlon task folder (``--data.root``).

The folder is read as MONAI reads it (:func:`monai.data.load_decathlon_datalist`):
``dataset.json`` lists the ``training`` pairs ``{"image": "./imagesTr/x.nii.gz", "label":
"./labelsTr/x.nii.gz"}`` and names the classes in ``labels`` (``{"0": "background", "1":
"spleen"}``); ``imagesTs/`` has no labels and is not used. Stages:

1. :func:`read_task`: the root, ``dataset.json`` and every listed pair checked (a mistake is one
   line naming ``--data.root``, exit status 2);
2. :func:`split_cases`: the Decathlon publishes no validation split, so ``val_frac`` of the
   training cases are held out, drawn exactly as MONAI's ``DecathlonDataset(section=
   "validation", val_frac=..., seed=...)`` draws them: the datalist's indices shuffled by
   ``numpy.random.RandomState(seed)``, the first ``int(n * val_frac)`` validate;
3. :func:`build_task_store`: the cases written into one labeled CT store inside ``--output`` by
   the CT build (:func:`data_pipelines.ct.pipeline.run_ct_tasks`: RAS orientation, resampling
   to ``spacing``, labels by nearest neighbour, int16 HU), the held-out cases as its ``val``
   split; a re-run on the same cases resumes it;
4. :func:`ct_protocol`: the segmentation protocol (:class:`~geomed_mim.evaluation.protocol.
   Protocol`) on that store through :class:`~geomed_mim.data.segmentation.CTSegDataModule`
   (HU window ``window`` -> [0, 1]), which the command runs as on any labeled CT store.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipelines import parallel
from data_pipelines.ct.config import MAX_SPACING_MM, MIN_SPACING_MM, CTBuildConfig
from data_pipelines.ct.discover import CTCase, CTDiscovery, nifti_stem
from data_pipelines.ct.pipeline import run_ct_tasks
from geomed_mim.evaluation import scene_data as sd
from geomed_mim.evaluation.protocol import Protocol, check_flags
from geomed_mim.evaluation.report import write_config
from geomed_mim.usage import UsageError

CLASS_PATH = "geomed_mim.evaluation.msd.MSDTask"  # the --data.class_path of this protocol
CT_DATAMODULE = "geomed_mim.data.segmentation.CTSegDataModule"
DATASET_JSON = "dataset.json"
STORE_DIR, CLASSES_FILE, CASES_FILE = "msd_store", "msd_classes.json", "msd_cases.json"
MONAI_MAX_SEED = 2**32  # MONAI's Randomizable takes the seed modulo this


@dataclass
class MSDData:
    """The task folder, its split and preprocessing, and the training crops (``--data.*``)."""

    class_path: str = CLASS_PATH
    root: str = ""  # the task folder holding dataset.json (the only thing a user changes)
    val_frac: float = 0.2  # MONAI DecathlonDataset's val_frac: training cases held out
    split_seed: int = 0  # MONAI DecathlonDataset's seed
    spacing: list[float] = field(default_factory=lambda: [1.5, 1.5, 1.5])  # mm, X Y Z
    window: list[float] = field(default_factory=lambda: [-175.0, 250.0])  # HU -> [0, 1]
    crop_size: int = 96
    batch_size: int = 2
    crops_per_volume: int = 2
    samples_per_epoch: int | None = None
    foreground_fraction: float = 0.7
    crop_overhang: float = 0.5
    workers: int = 1  # processes building the store


@dataclass
class MSDProtocol(Protocol):
    """The segmentation protocol's flags with ``--data`` a task folder: :func:`ct_protocol`
    turns it into the :class:`Protocol` that runs."""

    data: MSDData = field(default_factory=MSDData)  # type: ignore[assignment]
    output: str = "runs/evaluate_msd"
    title: str = "Medical Segmentation Decathlon"


@dataclass(frozen=True)
class MSDTask:
    """A Decathlon task folder as read: its class names by id and its labeled cases
    (``{"image", "label"}`` absolute paths, in ``dataset.json`` order)."""

    root: Path
    name: str
    classes: dict[int, str]
    cases: list[dict[str, str]]


# -- stage 1: the folder ----------------------------------------------------------------------
def read_task(root: str) -> MSDTask:
    """The task at ``root``, every listed pair checked; a mistake is one line."""
    folder = check_root(root)
    meta = read_dataset_json(folder)
    classes = class_table(meta, folder)
    from monai.data import load_decathlon_datalist  # MONAI's own reading of the layout

    cases = load_decathlon_datalist(folder / DATASET_JSON, True, "training")
    for i, case in enumerate(cases):
        check_case(folder, i, case)
    return MSDTask(folder, str(meta.get("name") or folder.name), classes, cases)


def check_root(root: str) -> Path:
    folder = sd.check_data_root(root, "the Decathlon task (e.g. Task09_Spleen): dataset.json, "
                                      "imagesTr/, labelsTr/")  # fmt: skip
    if not (folder / DATASET_JSON).is_file():
        raise UsageError(f"--data.root {root}: no {DATASET_JSON} in it; give the Decathlon task "
                         "folder itself (e.g. .../Task09_Spleen), as extracted")  # fmt: skip
    return folder.resolve()


def read_dataset_json(folder: Path) -> dict[str, Any]:
    """``dataset.json``: an object with a non-empty ``training`` list of image/label pairs."""
    where = f"--data.root {folder}: {DATASET_JSON}"
    try:
        meta = json.loads((folder / DATASET_JSON).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{where} is not JSON ({e})") from None
    training = meta.get("training") if isinstance(meta, dict) else None
    if not isinstance(training, list) or not training:
        raise UsageError(f'{where} has no "training" list of {{"image", "label"}} pairs; '
                         "give a Decathlon task's own dataset.json")  # fmt: skip
    for i, pair in enumerate(training):
        ok = isinstance(pair, dict) and all(
            isinstance(pair.get(k), str) for k in ("image", "label")
        )
        if not ok:
            raise UsageError(f'{where}: training[{i}] is not {{"image": ..., "label": ...}} '
                             f"(got {pair!r})")  # fmt: skip
    modality = meta.get("modality") or {}
    kinds = {str(v).upper() for v in modality.values()} if isinstance(modality, dict) else set()
    if kinds and kinds != {"CT"}:
        raise UsageError(f"{where}: modality {modality}; this protocol reads CT tasks (HU), e.g. "
                         "Task03_Liver, Task07_Pancreas, Task09_Spleen")  # fmt: skip
    return meta


def class_table(meta: dict[str, Any], folder: Path) -> dict[int, str]:
    """``labels`` (``{"0": "background", "1": "spleen"}``) as class names by id; id 0 is the
    background the mean Dice leaves out."""
    labels = meta.get("labels")
    try:
        classes = {int(k): str(v) for k, v in labels.items()}  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        classes = {}
    if 0 not in classes or len(classes) < 2:
        raise UsageError(f'--data.root {folder}: {DATASET_JSON} "labels" is {labels!r}; give '
                         'the class names by id, 0 the background: {"0": "background", '
                         '"1": "spleen"}')  # fmt: skip
    return dict(sorted(classes.items()))


def check_case(folder: Path, i: int, case: dict[str, str]) -> None:
    """Both files exist and are NIfTI, the image one-channel 3-D, the label on its grid."""
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    shapes = {}
    for key in ("image", "label"):
        path = Path(case[key])
        where = f"--data.root {folder}: {DATASET_JSON} training[{i}].{key}"
        if not path.is_file():
            raise UsageError(f"{where} {case_path(path, folder)} does not exist; restore the "
                             "file or drop the pair from dataset.json")  # fmt: skip
        try:
            shapes[key] = tuple(int(n) for n in nib.load(path).shape)
        except (OSError, ValueError, EOFError, ImageFileError) as e:
            raise UsageError(f"{where} {path.name} cannot be read as NIfTI ({e})") from None
    image, label = shapes["image"], shapes["label"]
    name = Path(case["image"]).name
    if len(image) != 3:
        raise UsageError(f"--data.root {folder}: {name} has shape {list(image)}; CT is read "
                         "as one-channel 3-D volumes")  # fmt: skip
    if label[:3] != image or any(n != 1 for n in label[3:]):
        raise UsageError(f"--data.root {folder}: label {Path(case['label']).name} has shape "
                         f"{list(label)}, its image {name} {list(image)}; a label map must "
                         "be on its image's grid")  # fmt: skip


def case_path(path: Path, folder: Path) -> str:
    """``./imagesTr/x.nii.gz`` for a file in the task folder, as dataset.json writes it."""
    return f"./{path.relative_to(folder)}" if path.is_relative_to(folder) else str(path)


# -- stage 2: the split ----------------------------------------------------------------------
def split_cases(n: int, val_frac: float, seed: int) -> list[str]:
    """``"train"`` or ``"val"`` for each of the ``n`` cases in datalist order, as MONAI's
    ``DecathlonDataset`` splits its ``training`` section into training and validation."""
    indices = np.arange(n)
    np.random.RandomState(seed % MONAI_MAX_SEED).shuffle(indices)
    held_out = set(indices[: int(n * val_frac)].tolist())
    return ["val" if i in held_out else "train" for i in range(n)]


def check_split(splits: list[str], data: MSDData) -> None:
    n, held = len(splits), splits.count("val")
    if held == 0 or held == n:
        raise UsageError(f"--data.val_frac {data.val_frac}: holds out {held} of the {n} "
                         f"training cases (int({n} x {data.val_frac:g})); give a fraction that "
                         "leaves at least one case on each side, e.g. 0.2")  # fmt: skip


def check_data(data: MSDData) -> None:
    """The ``--data.*`` settings that need no file."""
    if not 0 < data.val_frac < 1:
        raise UsageError(f"--data.val_frac {data.val_frac}: give a fraction in (0, 1), e.g. 0.2")
    if len(data.spacing) != 3 or not all(
        MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in data.spacing
    ):
        raise UsageError(
            f"--data.spacing {data.spacing}: give three values in "
            f"[{MIN_SPACING_MM}, {MAX_SPACING_MM}] mm, e.g. [1.5, 1.5, 1.5]"
        )
    if len(data.window) != 2 or not data.window[0] < data.window[1]:
        raise UsageError(f"--data.window {data.window}: give [low, high] HU, e.g. [-175, 250]")


# -- stage 3: the store ----------------------------------------------------------------------
def case_id(case: dict[str, str]) -> str:
    return nifti_stem(Path(case["image"]))


def write_class_table(classes: dict[int, str], path: Path) -> Path:
    """The class table of the store (every other label value is ignored in loss and Dice)."""
    table = {"classes": [{"id": i, "name": name} for i, name in classes.items()]}
    path.write_text(json.dumps(table, indent=1))
    return path


def store_is_stale(out: Path, record: dict[str, Any]) -> bool:
    """True when ``out`` holds a store built from other cases, spacing or classes (it is
    rebuilt); the same ones resume it (their split is set anew at every build)."""
    path = out / CASES_FILE
    if not (out / STORE_DIR).exists():
        return False
    return not path.is_file() or json.loads(path.read_text()) != record


def build_task_store(task: MSDTask, splits: list[str], data: MSDData, out: Path, say: Any) -> Path:
    """The task's cases as one labeled CT store ``<out>/msd_store``, the held-out cases as its
    ``val`` split; a case the build sets aside is one line naming it."""
    out.mkdir(parents=True, exist_ok=True)
    store = out / STORE_DIR
    record = {"root": str(task.root), "cases": task.cases, "spacing": list(data.spacing),
              "classes": {str(i): name for i, name in task.classes.items()}}  # fmt: skip
    cfg = CTBuildConfig(
        input=[c["image"] for c in task.cases], output=str(store),
        classes=str(write_class_table(task.classes, out / CLASSES_FILE)),
        spacing=tuple(data.spacing), labels="none", val_fraction=0.0, workers=data.workers,
        overwrite=store_is_stale(out, record),
    )  # fmt: skip
    cfg.validate()
    (out / CASES_FILE).write_text(json.dumps(record, indent=1))
    cases = [CTCase(case_id(c), "nifti", c["image"], label=c["label"]) for c in task.cases]
    by_case = {case.case_id: split for case, split in zip(cases, splits, strict=True)}
    with parallel.session(cfg.scheduler, cfg.workers):
        report = run_ct_tasks(cfg, CTDiscovery(cases), splits=by_case)
    if report.quarantined:
        q = report.quarantined[0]
        raise UsageError(f"--data.root {task.root}: {Path(q.source).name} could not be built "
                         f"({q.reason}); {len(report.quarantined)} of {len(cases)} cases set "
                         "aside, see the store's quarantine record")  # fmt: skip
    say(f"MSD {task.name}: {splits.count('train')} training and {splits.count('val')} held-out "
        f"cases in {store} ({report.ran_parts} built, {report.resumed_parts} kept)")  # fmt: skip
    return store


# -- stage 4: the protocol -------------------------------------------------------------------
def ct_protocol(p: MSDProtocol, store: Path) -> Protocol:
    """The segmentation protocol on the task's store: its ``val`` split validates."""
    d = p.data
    init_args = {
        "stores": [str(store)], "val_split": "val", "crop_size": d.crop_size,
        "batch_size": d.batch_size, "crops_per_volume": d.crops_per_volume,
        "samples_per_epoch": d.samples_per_epoch, "window": list(d.window),
        "foreground_fraction": d.foreground_fraction, "crop_overhang": d.crop_overhang,
    }  # fmt: skip
    rest = {f.name: getattr(p, f.name) for f in dataclasses.fields(Protocol) if f.name != "data"}
    return Protocol(data={"class_path": CT_DATAMODULE, "init_args": init_args}, **rest)


def split_description(p: MSDProtocol, splits: list[str]) -> str:
    """The report's validation note."""
    return (f"{splits.count('val')} of the task's {len(splits)} labeled training cases held "
            f"out (val_frac {p.data.val_frac:g}, seed {p.data.split_seed}: the cases MONAI's "
            "DecathlonDataset(section='validation') holds out; the Decathlon has no labeled "
            "validation split)")  # fmt: skip


def prepare_msd(p: MSDProtocol, say: Any) -> tuple[Protocol, str, Path]:
    """Every check, then the store: the protocol to run, its validation note and the copy of
    the configuration written into ``--output``."""
    check_data(p.data)
    out = Path(p.output)
    check_flags(ct_protocol(p, out / STORE_DIR))  # every flag before the build
    task = read_task(p.data.root)
    splits = split_cases(len(task.cases), p.data.val_frac, p.data.split_seed)
    check_split(splits, p.data)
    store = build_task_store(task, splits, p.data, out, say)
    config = out / "config.yaml"
    write_config(dataclasses.asdict(p), config)
    return ct_protocol(p, store), split_description(p, splits), config
