"""The model benchmark's whole-study measurement: co-registration and segmentation in a fresh process."""

from __future__ import annotations

from neuroseg.model.benchmark import cpu_variants, format_report, whole_study


def test_whole_study_times_co_registration_and_every_segment_step():
    report = whole_study((40, 40, 32), mc_samples=2, model_path=None, device="cpu")
    assert "error" not in report, report
    timings = report["timings_s"]
    assert list(timings)[0] == "coregistration" and timings["coregistration"] > 0
    for step in ("preprocessing", "inference", "mc_dropout", "gradcam", "postprocessing"):
        assert step in timings
    steps = sum(value for key, value in timings.items() if key != "total")
    assert timings["total"] >= 0.9 * steps
    assert report["peak_rss_mb"] >= report["peak_rss_before_segment_mb"] > 0
    line = format_report({"model": {"name": "m", "version": "v", "weights": "random"}, "device": "cpu",
                          "torch_threads": 1, "field_of_view_mm": [40, 40, 32], "shape": [10, 10, 8],
                          "spacing_mm": 4.0, "window": [8, 8, 8], "mc_samples": 2, "timings": {},
                          "targets": {"mc_ours_max_ratio": 1.5, "gradcam_ours_max_ratio": 2.0,
                                      "mc_ours_ok": True, "gradcam_ours_ok": True},
                          "peak_rss_mb_bench_process": 1.0, "whole_study": report})
    assert "coregistration" in line


def test_cpu_variants_measure_the_exported_trunk_where_a_runtime_is_installed():
    import importlib.util

    from neuroseg.model.runtime import random_model

    report = cpu_variants(random_model(seed=1))
    assert report["bf16_autocast"]["seconds"] > 0 and report["fp32_1_thread"]["label_agreement"] >= 0.99
    for name in ("onnxruntime", "openvino"):
        row = report[name]
        if importlib.util.find_spec(name) is None or importlib.util.find_spec("onnx") is None:
            assert row["available"] is (importlib.util.find_spec(name) is not None) and "seconds" not in row
            continue
        # the same network: the exported trunk gives the labels of the float32 reference
        assert row["seconds"] > 0 and row["ratio"] > 0 and row["label_agreement"] >= 0.999, row
