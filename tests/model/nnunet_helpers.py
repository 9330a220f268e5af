"""A tiny nnU-Net v2 model folder made here with nnU-Net's own tools (nothing is downloaded).

:func:`make_nnunet_model` writes a few synthetic glioma cases in nnU-Net's raw
format (the layout and region-based labels of nnU-Net's own BraTS 2021
conversion, Dataset137: channels T1, T1ce, T2, Flair; label values 1 ED,
2 NCR, 3 ET; regions whole tumour, tumour core, enhancing tumour), runs
``nnUNetv2_plan_and_preprocess`` on them, and trains nnU-Net's own
``nnUNetTrainer`` for a handful of iterations per fold on the CPU, which
writes ``fold_*/checkpoint_final.pth``, ``plans.json`` and ``dataset.json``
in nnU-Net's format. nnU-Net reads its folders from environment variables
when it is imported, so the work runs in a child process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

DATASET_ID = 501
DATASET_NAME = f"Dataset{DATASET_ID}_TinyGlioma"
SHAPE = (32, 32, 24)  # x, y, z voxels at 1 mm
CHANNELS = {"0": "T1", "1": "T1ce", "2": "T2", "3": "Flair"}
# nnU-Net's BraTS 2021 conversion: the labels are regions, values 1 ED, 2 NCR, 3 ET
LABELS = {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": [3]}

_TRAIN = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
torch.manual_seed(0)
for fold in sys.argv[2].split(","):
    trainer = get_trainer_from_args(sys.argv[1], "3d_fullres", int(fold), "nnUNetTrainer", "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.num_epochs = 1
    trainer.num_iterations_per_epoch = int(sys.argv[3])
    trainer.num_val_iterations_per_epoch = 1
    trainer.run_training()
"""


def phantom_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(4, X, Y, Z) images (T1, T1ce, T2, FLAIR) and the (X, Y, Z) nnU-Net labels of one synthetic case."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij"))
    centre = np.array(SHAPE) / 2.0
    head = (((grid - centre[:, None, None, None]) / (centre[:, None, None, None] - 1.5)) ** 2).sum(0) < 1.0
    tumour_centre = centre + rng.uniform(-4, 4, 3)
    distance = np.sqrt(((grid - tumour_centre[:, None, None, None]) ** 2).sum(0))
    radius = rng.uniform(6.0, 8.0)
    labels = np.zeros(SHAPE, np.uint8)
    labels[(distance < radius) & head] = 1  # ED
    labels[distance < radius * 0.6] = 3  # ET rim
    labels[distance < radius * 0.35] = 2  # NCR
    # tissue intensities (T1, T1ce, T2, FLAIR) of brain, ED, ET and NCR
    table = {0: (100, 100, 80, 90), 1: (85, 90, 150, 170), 3: (90, 220, 120, 130), 2: (60, 70, 180, 110)}
    images = np.zeros((4, *SHAPE), np.float32)
    for value, levels in table.items():
        where = (labels == value) & head
        for channel, level in enumerate(levels):
            images[channel][where] = level
    images += rng.normal(0, 4, images.shape).astype(np.float32) * head
    return images, labels


def write_raw_dataset(raw: Path, cases: int = 6) -> Path:
    """The synthetic cases in nnU-Net's raw format (NIfTI, ``imagesTr``/``labelsTr``, dataset.json)."""
    import SimpleITK as sitk

    folder = raw / DATASET_NAME
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)

    def write(array: np.ndarray, path: Path) -> None:
        image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))  # ITK arrays are z, y, x
        image.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(image, str(path))

    for index in range(cases):
        images, labels = phantom_case(index)
        for channel in range(4):
            write(images[channel], folder / "imagesTr" / f"glioma_{index:03d}_{channel:04d}.nii.gz")
        write(labels, folder / "labelsTr" / f"glioma_{index:03d}.nii.gz")
    dataset = {"channel_names": CHANNELS, "labels": LABELS, "regions_class_order": [1, 2, 3],
               "numTraining": cases, "file_ending": ".nii.gz", "name": "TinyGlioma",
               "description": "Synthetic glioma phantoms made by the neuroseg tests", "reference": "neuroseg tests",
               "licence": "CC-BY-4.0", "release": "0.1"}
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return folder


def _command(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{name} is not installed (pip install -e '.[nnunet]')")
    return found


def _run(command: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{Path(command[0]).name} failed ({done.returncode}):\n{(done.stdout + done.stderr)[-4000:]}")


def make_nnunet_model(work: Path, folds: tuple[int, ...] = (0, 1), iterations: int = 3) -> Path:
    """Plan, preprocess and briefly train with nnU-Net's tools; the trained-model folder it writes."""
    env = {**os.environ, "nnUNet_raw": str(work / "raw"), "nnUNet_preprocessed": str(work / "preprocessed"),
           "nnUNet_results": str(work / "results"), "nnUNet_n_proc_DA": "1", "nnUNet_compile": "false",
           "nnUNet_def_n_proc": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    write_raw_dataset(work / "raw")
    _run([_command("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", "3d_fullres", "-np", "1",
          "-npfp", "1", "--verify_dataset_integrity"], env)
    # no augmentation worker processes while training (the planner needs at least one)
    _run([sys.executable, "-c", _TRAIN, str(DATASET_ID), ",".join(map(str, folds)), str(iterations)],
         {**env, "nnUNet_n_proc_DA": "0"})
    model = work / "results" / DATASET_NAME / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    assert all((model / f"fold_{fold}" / "checkpoint_final.pth").is_file() for fold in folds)
    return model


if __name__ == "__main__":  # build one by hand: python -m tests.model.nnunet_helpers WORK_DIR
    print(make_nnunet_model(Path(sys.argv[1])))
