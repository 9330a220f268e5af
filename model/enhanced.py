"""The frames of one Enhanced (multi-frame) MR image, grouped into stacks.

An Enhanced MR Image Storage file (or a Legacy Converted Enhanced one) holds
every slice of a series as frames. Each frame's geometry lives in the
functional groups: PlanePositionSequence, PlaneOrientationSequence and
PixelMeasuresSequence, per frame or shared by all (PS3.3 C.7.6.16). One file
may also hold several stacks: a three-plane localizer, several orientations,
several echoes or time points. They are told apart by the frame's StackID and
orientation (FrameContentSequence, PlaneOrientationSequence), then by its
TemporalPositionIndex and effective echo time, which is what the file's
DimensionIndexSequence organises.

:func:`frame_stacks` returns the stacks, largest first; a volume is built
from one of them (:func:`largest_stack`: the one with the most frames, which
is the imaging stack next to a localizer, and the first time point or echo of
a multi-echo or dynamic series).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset

#: Orientation cosines closer than this count as one orientation (about 0.6 degrees).
ORIENTATION_TOLERANCE = 0.01


@dataclass(frozen=True)
class FrameStack:
    """Frames of one stack, in file order (1-based frame numbers)."""

    frame_numbers: tuple[int, ...]
    label: str  # what tells it apart from the other stacks, for messages

    def __len__(self) -> int:
        return len(self.frame_numbers)


def _item(owner: Dataset | None, keyword: str) -> Dataset | None:
    sequence = owner.get(keyword) if owner is not None else None
    return sequence[0] if sequence else None


def frame_attribute(ds: Dataset, frame: Dataset | None, group: str, attribute: str) -> object:
    """An attribute of one frame: from its per-frame functional group, else from the shared one."""
    for owner in (frame, _item(ds, "SharedFunctionalGroupsSequence")):
        item = _item(owner, group)
        if item is not None and attribute in item:
            return item.get(attribute)
    return None


def is_multiframe(ds: Dataset) -> bool:
    """Whether ``ds`` keeps its slices as frames with functional groups (Enhanced or Legacy Converted)."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def _key(ds: Dataset, frame: Dataset | None, orientations: list[tuple[float, ...]]
         ) -> tuple[str, tuple[float, ...], int, float]:
    """What tells the frame's stack apart; ``orientations`` collects the distinct orientations seen so far."""
    stack_id = frame_attribute(ds, frame, "FrameContentSequence", "StackID")
    temporal = frame_attribute(ds, frame, "FrameContentSequence", "TemporalPositionIndex")
    echo = frame_attribute(ds, frame, "MREchoSequence", "EffectiveEchoTime")
    orientation = frame_attribute(ds, frame, "PlaneOrientationSequence", "ImageOrientationPatient")
    try:
        values = tuple(float(v) for v in orientation)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        values = ()
    # the first orientation seen within the tolerance stands for all close to it
    cosines = next((seen for seen in orientations if len(seen) == len(values)
                    and max((abs(a - b) for a, b in zip(seen, values)), default=0.0) <= ORIENTATION_TOLERANCE),
                   None)
    if cosines is None:
        orientations.append(values)
        cosines = values
    try:
        temporal_index = int(temporal) if temporal is not None else 0  # type: ignore[call-overload]
    except (TypeError, ValueError):
        temporal_index = 0
    try:
        echo_time = float(echo) if echo is not None else 0.0  # type: ignore[arg-type]
    except (TypeError, ValueError):
        echo_time = 0.0
    return str(stack_id or "").strip(), cosines, temporal_index, echo_time


def frame_stacks(ds: Dataset) -> list[FrameStack]:
    """The stacks of a multi-frame image, the largest first (ties: the one whose first frame comes first).

    Frames with the same StackID, orientation, temporal position and echo time
    form one stack. A file whose functional groups say nothing of these is one
    stack of all its frames.
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    groups: dict[tuple[str, tuple[float, ...], int, float], list[int]] = {}
    orientations: list[tuple[float, ...]] = []
    for number in range(1, frames + 1):
        frame = per_frame[number - 1] if len(per_frame) == frames else None
        groups.setdefault(_key(ds, frame, orientations), []).append(number)
    keys = list(groups)
    differs = [any(key[part] != keys[0][part] for key in keys) for part in range(4)]
    stacks = []
    for key, numbers in groups.items():
        stack_id, cosines, temporal, echo = key
        parts = [name for name, on in zip(
            (f"StackID {stack_id!r}", f"orientation {np.round(cosines, 2).tolist()}",
             f"temporal position {temporal}", f"echo time {echo:g} ms"), differs) if on]
        stacks.append(FrameStack(tuple(numbers), ", ".join(parts) or "all frames"))
    return sorted(stacks, key=lambda stack: (-len(stack), stack.frame_numbers[0]))


def largest_stack(ds: Dataset) -> tuple[FrameStack, str | None]:
    """The stack to build a volume from, and a note naming what was left out (``None`` for a single stack)."""
    stacks = frame_stacks(ds)
    chosen = stacks[0]
    if len(stacks) == 1:
        return chosen, None
    others = "; ".join(f"{stack.label}: {len(stack)} frame(s)" for stack in stacks[1:])
    note = (f"{ds.get('SOPInstanceUID', '?')} holds {len(stacks)} stacks; used {chosen.label} "
            f"({len(chosen)} frames), left out {others}")
    return chosen, note


def _floats(value: object, count: int, what: str) -> np.ndarray:
    try:
        array = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{what} is missing or not numeric ({value!r})") from None
    if array.shape != (count,):
        raise ValueError(f"{what} must hold {count} numbers; got {value!r}")
    return array


def stack_volume(ds: Dataset, stack: FrameStack) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """One stack as ``(float32 array (slices, rows, columns), LPS affine, frame numbers of the slices)``.

    Slices are sorted along the normal ``row cosine x column cosine``, as
    SimpleITK orders a single-frame series; RescaleSlope/Intercept of each
    frame (PixelValueTransformationSequence) is applied.

    Raises
    ------
    ValueError
        If a frame lacks its position, orientation or pixel spacing, or two
        frames of the stack lie at the same position.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    frames = [per_frame[number - 1] if per_frame else None for number in stack.frame_numbers]
    positions = np.array([_floats(frame_attribute(ds, frame, "PlanePositionSequence", "ImagePositionPatient"), 3,
                                  f"frame {number} ImagePositionPatient")
                          for number, frame in zip(stack.frame_numbers, frames)])
    orientation = _floats(frame_attribute(ds, frames[0], "PlaneOrientationSequence", "ImageOrientationPatient"),
                          6, "ImageOrientationPatient")
    spacing = _floats(frame_attribute(ds, frames[0], "PixelMeasuresSequence", "PixelSpacing"), 2, "PixelSpacing")
    normal = np.cross(orientation[:3], orientation[3:])
    order = np.argsort(positions @ normal, kind="stable")
    if len(order) > 1 and np.min(np.diff((positions @ normal)[order])) < 1e-3:
        raise ValueError(f"two frames of {stack.label} lie at the same position")
    pixels = ds.pixel_array
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    slices = []
    for index in order:
        frame = frames[index]
        slope = frame_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = frame_attribute(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        values = pixels[stack.frame_numbers[index] - 1].astype(np.float32)
        slices.append(values * np.float32(float(slope) if slope is not None else 1.0)
                      + np.float32(float(intercept) if intercept is not None else 0.0))
    affine = np.eye(4)
    affine[:3, 2] = orientation[:3] * spacing[1]
    affine[:3, 1] = orientation[3:] * spacing[0]
    first, last = positions[order[0]], positions[order[-1]]
    affine[:3, 0] = (last - first) / (len(order) - 1) if len(order) > 1 else normal
    affine[:3, 3] = first
    return np.stack(slices), affine, [stack.frame_numbers[index] for index in order]
