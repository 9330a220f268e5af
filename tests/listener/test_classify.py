"""Series classification on real-world names and headers from GE, Siemens and Philips."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from neuroseg.listener.classify import RulesError, RuleSet, SeriesHeader
from neuroseg.worker.contracts import SequenceRole

T1, T1CE, T2, FLAIR, OTHER = (SequenceRole.T1, SequenceRole.T1CE, SequenceRole.T2, SequenceRole.FLAIR,
                              SequenceRole.OTHER)

# (vendor, SeriesDescription, header values, expected role). Header values are
# typical of the vendor's protocol: TR/TE/TI in ms, ScanningSequence, ImageType.
SE_T1 = dict(repetition_time=550, echo_time=12, scanning_sequence=("SE",))
GRE_T1 = dict(repetition_time=8.5, echo_time=3.2, scanning_sequence=("GR",), mr_acquisition_type="3D")
MPRAGE = dict(repetition_time=2300, echo_time=2.3, inversion_time=900, scanning_sequence=("GR", "IR"),
              mr_acquisition_type="3D")
TSE_T2 = dict(repetition_time=5000, echo_time=95, scanning_sequence=("SE",))
FLAIR_2D = dict(repetition_time=9000, echo_time=120, inversion_time=2500, scanning_sequence=("SE", "IR"))
FLAIR_3D = dict(repetition_time=5000, echo_time=390, inversion_time=1800, scanning_sequence=("SE", "IR"),
                mr_acquisition_type="3D")
T1_FLAIR = dict(repetition_time=2200, echo_time=9, inversion_time=860, scanning_sequence=("SE", "IR"))
DWI = dict(repetition_time=6000, echo_time=80, scanning_sequence=("EP",))
DERIVED = dict(image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"))
LOCALIZER = dict(repetition_time=8, echo_time=4, scanning_sequence=("GR",), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
AGENT = dict(contrast_bolus_agent="GADAVIST 7ML")

TABLE = [
    # GE
    ("GE", "Ax T1 FLAIR", T1_FLAIR, T1),
    ("GE", "Sag T1 FLAIR", T1_FLAIR, T1),
    ("GE", "AX T2 FLAIR", FLAIR_2D, FLAIR),
    ("GE", "Sag CUBE T2 FLAIR", FLAIR_3D, FLAIR),
    ("GE", "Ax T2 FRFSE", TSE_T2, T2),
    ("GE", "AX T2 PROPELLER", TSE_T2, T2),
    ("GE", "Sag 3D T1 BRAVO", GRE_T1, T1),
    ("GE", "Ax 3D T1 BRAVO +C", {**GRE_T1, **AGENT}, T1CE),
    ("GE", "AX T1 SE +C", SE_T1, T1CE),
    ("GE", "Ax T1 FLAIR +C", T1_FLAIR, T1CE),
    ("GE", "AX T1 PRE", SE_T1, T1),
    ("GE", "3-Plane Loc", LOCALIZER, OTHER),
    ("GE", "ASSET calibration", dict(repetition_time=150, echo_time=1.5), OTHER),
    ("GE", "Ax DWI 1000b", DWI, OTHER),
    ("GE", "Apparent Diffusion Coefficient (mm2/s)", {**DWI, **DERIVED}, OTHER),
    ("GE", "Ax SWAN", dict(repetition_time=40, echo_time=25, scanning_sequence=("GR",)), OTHER),
    ("GE", "AX GRE T2*", dict(repetition_time=650, echo_time=20, scanning_sequence=("GR",)), OTHER),
    ("GE", "FSE PD AXIAL OBL", dict(repetition_time=2300, echo_time=22, scanning_sequence=("SE",)), OTHER),
    ("GE", "Ax Perfusion DSC", DWI, OTHER),
    # Siemens
    ("Siemens", "t1_mprage_sag_p2_iso", MPRAGE, T1),
    ("Siemens", "t1_mprage_sag_p2_iso +C", MPRAGE, T1CE),
    ("Siemens", "t1_mprage_tra_p2_iso_post", MPRAGE, T1CE),
    ("Siemens", "t2_tse_tra_p2", TSE_T2, T2),
    ("Siemens", "t2_blade_tra", TSE_T2, T2),
    ("Siemens", "t2_tirm_tra_dark-fluid", FLAIR_2D, FLAIR),
    ("Siemens", "t2_space_dark-fluid_sag_p2_iso", FLAIR_3D, FLAIR),
    ("Siemens", "t1_se_tra_KM", SE_T1, T1CE),
    ("Siemens", "t1_vibe_fs_tra_post", GRE_T1, T1CE),
    ("Siemens", "ep2d_diff_3scan_trace_p2", DWI, OTHER),
    ("Siemens", "ep2d_diff_3scan_trace_p2_ADC", {**DWI, **DERIVED}, OTHER),
    ("Siemens", "AAHead_Scout_32ch-head-coil", LOCALIZER, OTHER),
    ("Siemens", "localizer", dict(repetition_time=8, echo_time=4), OTHER),
    ("Siemens", "ep2d_perf_p2", DWI, OTHER),
    ("Siemens", "t2_swi_tra_p2_1.5mm_SWI", dict(repetition_time=27, echo_time=20), OTHER),
    ("Siemens", "ToF_3D_multi-slab", GRE_T1, OTHER),
    ("Siemens", "t1_fl2d_sag", dict(repetition_time=300, echo_time=2.5, scanning_sequence=("GR",)), T1),
    # Philips
    ("Philips", "T1W_3D_TFE +GD", GRE_T1, T1CE),
    ("Philips", "T1W_3D_TFE", GRE_T1, T1),
    ("Philips", "sT1W_3D_TFE", GRE_T1, T1),
    ("Philips", "T2W_TSE", TSE_T2, T2),
    ("Philips", "T2W_FLAIR", FLAIR_2D, FLAIR),
    ("Philips", "3D_FLAIR", FLAIR_3D, FLAIR),
    ("Philips", "FLAIR_3D", FLAIR_3D, FLAIR),
    ("Philips", "DWI_SENSE", DWI, OTHER),
    ("Philips", "dADC", {**DWI, **DERIVED}, OTHER),
    ("Philips", "Survey_SHC", LOCALIZER, OTHER),
    ("Philips", "T1W_SE_GD", SE_T1, T1CE),
    # header only: no useful name
    ("any", "Series 7", TSE_T2, T2),
    ("any", "", {**FLAIR_2D, "protocol_name": "AX FLAIR"}, FLAIR),
    ("any", "Ax T1 SE", {**SE_T1, **AGENT}, T1CE),
    ("any", "MPR Tra", {**GRE_T1, "image_type": ("DERIVED", "SECONDARY", "MPR")}, OTHER),
]


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return RuleSet.load()


@pytest.mark.parametrize(("vendor", "description", "values", "expected"), TABLE,
                         ids=[f"{row[0]}-{row[1] or 'no-description'}" for row in TABLE])
def test_classifies_vendor_naming(rules, vendor, description, values, expected):
    header = SeriesHeader("1.2.3", series_description=description, **values)
    result = rules.classify(header)
    assert result.role is expected, result.reasons
    assert result.reasons
    assert 0.0 <= result.confidence <= 1.0


def test_t1_flair_is_a_t1_and_says_why(rules):
    result = rules.classify(SeriesHeader("1.2.3", series_description="Ax T1 FLAIR", **T1_FLAIR))
    assert result.role is T1
    assert result.confidence >= 0.9
    assert any(reason.startswith("t1-flair-name") for reason in result.reasons)
    assert not any(reason.startswith("flair-name") for reason in result.reasons)


def test_name_and_header_agreeing_gives_full_confidence(rules):
    result = rules.classify(SeriesHeader("1.2.3", series_description="AX T2 FLAIR", **FLAIR_2D))
    assert result.confidence == 1.0
    assert any("TI 2500 ms" in reason for reason in result.reasons)


def test_header_only_evidence_gives_low_confidence(rules):
    result = rules.classify(SeriesHeader("1.2.3", series_description="Series 7", **TSE_T2))
    assert result.role is T2
    assert result.confidence == 0.3


def test_series_no_rule_matches_is_other_with_zero_confidence(rules):
    result = rules.classify(SeriesHeader("1.2.3", series_description="research sequence"))
    assert result.role is OTHER
    assert result.confidence == 0.0
    assert result.reasons == ("no rule matched; treated as other",)


def test_veto_records_the_ignored_evidence(rules):
    result = rules.classify(SeriesHeader("1.2.3", series_description="Ax T2 FLAIR",
                                         image_type=("DERIVED", "SECONDARY", "MPR"), **FLAIR_2D))
    assert result.role is OTHER
    assert result.reasons[0].startswith("derived (veto, other)")
    assert result.reasons[-1].startswith("ignored: flair-name")


def test_non_mr_series_is_other(rules):
    result = rules.classify(SeriesHeader("1.2.3", series_description="AX T2 FLAIR", modality="SR"))
    assert result.role is OTHER


@pytest.mark.parametrize(
    ("first", "second", "winner", "why"),
    [
        (dict(mr_acquisition_type="2D", instance_count=40, series_number=9),
         dict(mr_acquisition_type="3D", instance_count=30, series_number=3), "2", "3D over 2D"),
        (dict(mr_acquisition_type="2D", instance_count=40, series_number=3),
         dict(mr_acquisition_type="2D", instance_count=24, series_number=9), "1", "more slices (40 over 24)"),
        (dict(mr_acquisition_type="2D", instance_count=24, series_number=3),
         dict(mr_acquisition_type="2D", instance_count=24, series_number=9), "2", "later series number (9 over 3)"),
    ],
    ids=["3d-over-2d", "more-slices", "later-series"],
)
def test_two_flairs_keep_the_preferred_one(rules, first, second, winner, why):
    values = {key: value for key, value in FLAIR_2D.items()}
    headers = [
        SeriesHeader("1", series_description="AX T2 FLAIR", **{**values, **first}),
        SeriesHeader("2", series_description="Sag T2 FLAIR", **{**values, **second}),
    ]
    results = {item.series_instance_uid: item for item in rules.classify_study(headers)}
    loser = "1" if winner == "2" else "2"
    assert results[winner].role is FLAIR
    assert results[loser].role is OTHER
    assert why in results[loser].reasons[-1]
    assert results[loser].reasons[-1].endswith("this series becomes other")
    assert f"preferred over series" in results[winner].reasons[-1]


def test_required_roles_need_flair_and_one_structural(rules):
    assert rules.required.missing([FLAIR, T2]) == []
    assert rules.required.missing([T1, T1CE]) == ["FLAIR"]
    assert rules.required.missing([FLAIR]) == ["one of T1ce/T1/T2"]


@pytest.mark.parametrize(
    ("folder", "expected"),
    [
        ("ge-mr750-t1-mprage-axial", T1),
        ("ge-signa-pd-axial-20", OTHER),
        ("siemens-prisma-t1-sagittal-prone", T1),
    ],
)
def test_real_series_headers(rules, shared_data, folder, expected):
    files = sorted((shared_data / "real-dicom" / folder).iterdir())
    dataset = pydicom.dcmread(files[0], stop_before_pixels=True)
    result = rules.classify(SeriesHeader.from_dataset(dataset, instance_count=len(files)))
    assert result.role is expected, result.reasons


def test_shipped_rules_load(rules):
    assert rules.source.endswith("rules.yaml")
    assert [role.value for role in rules.required.all_of] == ["FLAIR"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: []", "non-empty list"),
        ("rules:\n  - {name: a, roles: [T3], score: 1, when: {tr: [0, 1]}}", "'T3' is not a sequence role"),
        ("rules:\n  - {name: a, roles: [T1], score: 1, when: {colour: red}}", "unknown condition 'colour'"),
        ("rules:\n  - {name: a, roles: [T1], score: 1, when: {description: '(t1'}}", "not a valid regex"),
        ("rules:\n  - {name: a, roles: [T1], score: 1, when: {description: '{nope}'}}", "unknown pattern {nope}"),
        ("rules:\n  - {name: a, roles: [T1], score: 1, when: {tr: 5}}", r"tr must be \[min, max\]"),
        ("rules:\n  - {name: a, roles: [T1], veto: true, score: 1, when: {tr: [0, 1]}}", "veto rule must have roles"),
        ("role_order: [T1]\nrules:\n  - {name: a, roles: [T1], score: 1, when: {tr: [0, 1]}}", "role_order must list"),
        ("rules:\n  - {name: a, roles: [T1], score: 3, when: {tr: [0, 1]}}",
         r"rule 'a': score should be less than or equal to 2 \(got 3\)"),
        ("rules:\n  - {name: a, role: [T1], score: 1, when: {tr: [0, 1]}}", "rule 'a': unknown key 'role'; allowed: any_of, name"),
        ("rules:\n  - {name: a, roles: [T1], score: 1, any_of: [{tr: [0, 1]}, {te: [1, 2, 3]}]}",
         r"rule 'a': any_of\[1\]\.te must be \[min, max\] in ms \(null for open\) \(got \[1, 2, 3\]\)"),
        ("colour: red\nrules:\n  - {name: a, roles: [T1], score: 1, when: {tr: [0, 1]}}", "unknown key 'colour'; allowed: patterns"),
        ("rules:\n  - {name: a, roles: [T1], score: 1, when: {tr: [0, 1]}}\n  - {name: a, roles: [T2], score: 1, when: {te: [0, 1]}}",
         "rule name 'a' is used twice"),
    ],
    ids=["empty", "bad-role", "bad-condition", "bad-regex", "bad-pattern", "bad-range", "bad-veto", "role-order",
         "bad-score", "bad-rule-key", "nested-range", "bad-top-key", "duplicate-name"],
)
def test_invalid_rules_are_refused_naming_the_problem(tmp_path: Path, text, message):
    path = tmp_path / "rules.yaml"
    if "role_order" not in text:
        text = "role_order: [FLAIR, T1ce, T1, T2, other]\n" + text
    path.write_text(text)
    with pytest.raises(RulesError, match=message):
        RuleSet.load(path)


def test_an_error_names_the_file_the_key_path_the_value_and_what_is_allowed(tmp_path: Path):
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n  - {name: flair-name, roles: [FLAIR], score: 1, when: {acquisition: 4D}}\n")
    with pytest.raises(RulesError) as raised:
        RuleSet.load(path)
    assert str(raised.value) == f"{path}: rule 'flair-name': when.acquisition should be '2D' or '3D' (got '4D')"
