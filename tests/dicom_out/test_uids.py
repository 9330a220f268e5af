"""Deterministic UIDs: reprocessing replaces, a new model version adds."""

from __future__ import annotations

import re

from neuroseg.dicom_out import EncodeOptions, encode_study
from neuroseg.dicom_out.uids import derive_uid, output_uid
from tests.dicom_out.synthetic import synthetic_study

OPTIONS = EncodeOptions(maps={"probability"}, mesh_formats={"stl"})


def uids(objects) -> dict[str, tuple[str, str]]:
    return {obj.kind: (obj.sop_instance_uid, str(obj.dataset.SeriesInstanceUID)) for obj in objects}


def test_encoding_twice_gives_the_same_uids() -> None:
    study = synthetic_study((6, 24, 24))
    first = uids(encode_study(study.request(OPTIONS)))
    second = uids(encode_study(study.request(OPTIONS)))
    assert first == second


def test_a_new_model_version_gives_new_uids() -> None:
    study = synthetic_study((6, 24, 24))
    old = uids(encode_study(study.request(OPTIONS)))
    new = uids(encode_study(study.request(OPTIONS, model_version="0.2.0")))
    assert old.keys() == new.keys()
    assert not {uid for pair in old.values() for uid in pair} & {uid for pair in new.values() for uid in pair}


def test_uids_are_valid_2_25_uids() -> None:
    uid = output_uid("1.2.3.4", "1.0", "seg")
    assert re.fullmatch(r"2\.25\.[1-9][0-9]*", uid) and len(uid) <= 64
    assert uid == output_uid("1.2.3.4", "1.0", "seg")
    assert uid != output_uid("1.2.3.4", "1.0", "seg", "series")
    assert derive_uid("a", "b") != derive_uid("a|b", "")
