"""Training: a tiny run lowers the loss, resuming equals an uninterrupted run, helpers behave.

Everything runs on 4 mm phantoms with a two-level network and 16-voxel
patches, so a step takes a fraction of a second on a CPU.
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from neuroseg.model.checkpoint import load_checkpoint
from neuroseg.model.phantom import PhantomConfig, generate_phantoms
from neuroseg.model.data import augment_batch, drop_sequences
from neuroseg.model.train import TrainConfig, lr_factor, segmentation_loss, train
from neuroseg.worker.cli import main

TINY = dict(spacing_mm=4.0, patch_size=16, channels=(4, 8), head_channels=8, batch_size=2,
            val_fraction=0.0, checkpoint_every=1000, warmup_steps=2, threads=1)


@pytest.fixture(scope="module")
def tiny_phantoms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("phantoms")
    config = PhantomConfig(anatomy_spacing_mm=4.0, output_spacing_mm=4.0, multifocal_probability=0.0,
                           radius_mm=(22.0, 30.0))
    generate_phantoms(folder, 3, seed=100, config=config, progress=False)
    return folder


def _losses(work_dir: Path) -> list[float]:
    with open(work_dir / "metrics.csv") as stream:
        return [float(row["loss"]) for row in csv.DictReader(stream)]


def test_tiny_training_run_lowers_the_loss(tiny_phantoms, tmp_path):
    config = TrainConfig(data_dirs=(tiny_phantoms,), steps=40, lr=1e-2, seed=3, **TINY)
    result = train(config, out=tmp_path / "tiny.pt", work_dir=tmp_path / "work", command="test", progress=False)
    losses = _losses(tmp_path / "work")
    assert len(losses) == 40
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.2, losses
    network, net_config, metadata = load_checkpoint(result.checkpoint)
    assert net_config.spacing_mm == 4.0 and net_config.channels == (4, 8)
    assert metadata["training"]["command"] == "test"
    assert (tmp_path / "work" / "training_curve.png").stat().st_size > 0
    assert (tmp_path / "work" / "metrics.json").is_file()


def test_resumed_run_gives_the_same_weights_as_an_uninterrupted_one(tiny_phantoms, tmp_path):
    config = TrainConfig(data_dirs=(tiny_phantoms,), steps=6, lr=1e-2, seed=5, **TINY)
    straight = train(config, out=tmp_path / "a.pt", work_dir=tmp_path / "a", progress=False)
    partial = train(config, out=tmp_path / "b.pt", work_dir=tmp_path / "b", stop_after=3, progress=False)
    assert partial.steps == 3 and not (tmp_path / "b.pt").exists()
    resumed = train(config, out=tmp_path / "b.pt", work_dir=tmp_path / "b", resume=True, progress=False)
    assert resumed.steps == 6
    first = load_checkpoint(straight.checkpoint)[0].state_dict()
    second = load_checkpoint(resumed.checkpoint)[0].state_dict()
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=1e-6, msg=key)
    assert _losses(tmp_path / "a") == pytest.approx(_losses(tmp_path / "b"), abs=1e-6)


def test_resume_refuses_another_configuration(tiny_phantoms, tmp_path):
    config = TrainConfig(data_dirs=(tiny_phantoms,), steps=4, seed=5, **TINY)
    train(config, out=tmp_path / "c.pt", work_dir=tmp_path / "c", stop_after=1, progress=False)
    other = TrainConfig(data_dirs=(tiny_phantoms,), steps=4, seed=6, **TINY)
    with pytest.raises(ValueError, match="another configuration"):
        train(other, out=tmp_path / "c.pt", work_dir=tmp_path / "c", resume=True, progress=False)


def test_init_fine_tunes_at_another_spacing_but_refuses_other_layers(tiny_phantoms, tmp_path):
    base = TrainConfig(data_dirs=(tiny_phantoms,), steps=2, seed=5, **TINY)
    first = train(base, out=tmp_path / "base.pt", work_dir=tmp_path / "base", progress=False)
    finer = TrainConfig(data_dirs=(tiny_phantoms,), steps=2, seed=5, **{**TINY, "spacing_mm": 3.0,
                                                                        "patch_size": 24})
    tuned = train(finer, out=tmp_path / "finer.pt", work_dir=tmp_path / "finer", init=first.checkpoint,
                  progress=False)
    _, tuned_config, _ = load_checkpoint(tuned.checkpoint)
    assert tuned_config.spacing_mm == 3.0 and tuned_config.patch_size == (24, 24, 24)
    wider = TrainConfig(data_dirs=(tiny_phantoms,), steps=2, seed=5, **{**TINY, "channels": (8, 16)})
    with pytest.raises(ValueError, match="architecture"):
        train(wider, out=tmp_path / "wider.pt", work_dir=tmp_path / "wider", init=first.checkpoint,
              progress=False)


def test_whole_tumour_only_cases_train_with_their_own_loss(tmp_path):
    case = tmp_path / "wt" / "case_0"
    case.mkdir(parents=True)
    rng = np.random.default_rng(0)
    shape = (40, 40, 32)
    head = np.zeros(shape, dtype=np.float32)
    head[6:34, 6:34, 4:28] = 1.0
    tumour = np.zeros(shape, dtype=np.uint8)
    tumour[15:25, 15:25, 12:20] = 1
    affine = np.diag([-4.0, -4.0, 4.0, 1.0])
    for name, bright in (("T1", 0.7), ("FLAIR", 2.0)):
        image = head * (100 + 10 * rng.standard_normal(shape)) * np.where(tumour, bright, 1.0)
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), case / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(tumour, affine), case / "GT_W.nii.gz")
    config = TrainConfig(data_dirs=(tmp_path / "wt",), steps=3, seed=1, **TINY)
    result = train(config, out=tmp_path / "wt.pt", work_dir=tmp_path / "work", progress=False)
    assert np.isfinite(result.final_loss)


def test_segmentation_loss_is_lower_for_the_right_answer():
    from monai.losses import DiceCELoss

    labels = torch.zeros(2, 8, 8, 8, dtype=torch.long)
    labels[:, 2:6, 2:6, 2:6] = 2
    labels[1, 2:6, 2:6, 2:6] = 1  # sample 1 is whole-tumour only (label 1 = tumour)
    wt_only = torch.tensor([False, True])
    right = torch.full((2, 4, 8, 8, 8), -5.0)
    right[:, 0] = 5.0
    right[:, 0, 2:6, 2:6, 2:6] = -5.0
    right[:, 2, 2:6, 2:6, 2:6] = 5.0
    wrong = torch.zeros(2, 4, 8, 8, 8)
    dice_ce = DiceCELoss(softmax=True, batch=True)
    # absent classes keep a Dice term near 1 (MONAI's smoothing), so compare rather than expect zero
    assert segmentation_loss(right, labels, wt_only, dice_ce) < 0.3 * segmentation_loss(wrong, labels, wt_only, dice_ce)


def test_sequence_dropout_always_keeps_flair_or_t1ce():
    rng = np.random.default_rng(0)
    sequences = ("t1", "t1ce", "t2", "flair")
    seen = set()
    for _ in range(200):
        kept = drop_sequences(np.ones(4, dtype=np.float32), rng, sequences)
        assert kept[1] > 0 or kept[3] > 0
        seen.add(tuple(kept))
    assert (1.0, 0.0, 0.0, 1.0) in seen  # the FLAIR + T1 study of real-gt
    only_t1_flair = np.array([1, 0, 0, 1], dtype=np.float32)
    for _ in range(20):
        kept = drop_sequences(only_t1_flair, rng, sequences)
        assert kept[3] > 0 and kept[1] == 0 and kept[2] == 0


def test_augmentation_keeps_missing_sequences_zero_and_labels_valid():
    images = torch.randn(2, 4, 16, 16, 16)
    images[:, 2] = 0.0  # a missing sequence
    labels = torch.randint(0, 4, (2, 16, 16, 16))
    out, out_labels = augment_batch(images, labels, 0)
    assert out.shape == images.shape and out_labels.shape == labels.shape
    assert torch.all(out[:, 2] == 0)
    assert set(out_labels.unique().tolist()) <= {0, 1, 2, 3}
    assert not torch.equal(out, images)


def test_augmentation_depends_only_on_its_seed_and_moves_image_and_label_together():
    images = torch.zeros(2, 4, 16, 16, 16)
    images[:, :, 4:12, 4:12, 4:12] = 1.0 + torch.rand(2, 4, 8, 8, 8)
    labels = torch.zeros(2, 16, 16, 16, dtype=torch.long)
    labels[:, 6:10, 6:10, 6:10] = 2
    first, first_labels = augment_batch(images, labels, 7)
    again, again_labels = augment_batch(images, labels, 7)
    other, _ = augment_batch(images, labels, 8)
    assert torch.equal(first, again) and torch.equal(first_labels, again_labels)
    assert not torch.equal(first, other)
    # the tumour label stays inside the (moved) head
    assert torch.all(first[:, 0][first_labels > 0] != 0)


def test_learning_rate_warms_up_then_decays():
    factors = [lr_factor(step, warmup=5, total=100) for step in range(100)]
    assert factors[0] < factors[4] <= 1.0
    assert factors[-1] < 0.05
    assert max(factors) == pytest.approx(1.0)


def test_train_command_reports_a_missing_data_folder(tmp_path, capsys):
    code = main(["train", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.pt")])
    assert code == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_state_writes_the_weights_of_an_interrupted_run(tiny_phantoms, tmp_path):
    config = TrainConfig(data_dirs=(tiny_phantoms,), steps=6, seed=5, **{**TINY, "checkpoint_every": 2})
    train(config, out=tmp_path / "x.pt", work_dir=tmp_path / "w", stop_after=4, progress=False)
    code = main(["train", "--export-state", str(tmp_path / "w"), "--out", str(tmp_path / "x.pt")])
    assert code == 0
    network, _, metadata = load_checkpoint(tmp_path / "x.pt")
    assert metadata["training"]["stopped_at_step"] == 4
    state = torch.load(tmp_path / "w" / "state.pt", weights_only=False)
    for key, value in network.state_dict().items():
        torch.testing.assert_close(value, state["model"][key])


def test_data_weights_give_each_folder_its_share_of_the_patches():
    from neuroseg.model.train import _case_probabilities

    class Case:
        def __init__(self, case_id: str):
            self.case_id = case_id

    cases = [Case(f"phantom{i}") for i in range(9)] + [Case("real0")]
    dirs = {**{f"phantom{i}": 0 for i in range(9)}, "real0": 1}
    config = TrainConfig(data_dirs=(Path("phantoms"), Path("real")), data_weights=(2.0, 1.0))
    probabilities = _case_probabilities(cases, dirs, config)
    assert probabilities[-1] == pytest.approx(1 / 3)
    assert probabilities[:9].sum() == pytest.approx(2 / 3)
    assert _case_probabilities(cases, dirs, TrainConfig(data_dirs=(Path("p"), Path("r")))) is None
    with pytest.raises(ValueError, match="one positive --data-weight per --data folder"):
        TrainConfig(data_dirs=(Path("phantoms"), Path("real")), data_weights=(1.0,))


def test_augmented_batches_are_plain_tensors():
    # a MONAI MetaTensor here sends every operation of the training step through its metadata hook
    images, labels = augment_batch(torch.randn(2, 4, 16, 16, 16), torch.randint(0, 4, (2, 16, 16, 16)), seed=3)
    assert type(images) is torch.Tensor and type(labels) is torch.Tensor


def test_spatial_augmentation_draws_one_scale_for_all_axes_and_moves_the_head_mask_with_the_image():
    import torch

    from neuroseg.model.data import ROTATION_RADIANS, SCALE_RANGE, _rand_rotate_scale

    transform = _rand_rotate_scale(["image", "inside"], ["bilinear", "nearest"])
    image = torch.zeros(1, 24, 24, 24)
    image[:, 6:18, 6:18, 6:18] = 1.0
    for seed in range(5):
        transform.set_random_state(seed=seed)
        out = transform({"image": image, "inside": image.clone()})
        assert SCALE_RANGE[0] <= transform.scale <= SCALE_RANGE[1]
        assert isinstance(transform.scale, float)  # one factor, not one per axis
        assert all(abs(angle) <= ROTATION_RADIANS for angle in transform.angles)
        # the mask is moved by the same transform (nearest), not recomputed from the moved image
        moved_inside = torch.as_tensor(out["inside"])
        assert set(moved_inside.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(moved_inside > 0.5, torch.as_tensor(out["image"]) > 0.5) or \
            (moved_inside.sum() - (torch.as_tensor(out["image"]) > 0.5).sum()).abs() < 0.05 * moved_inside.sum()
