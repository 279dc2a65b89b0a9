from talkbench import demo


def test_demo_without_mini_observers_scores_image_quality_and_ranks_ground_truth_first(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "mini_observers_available", lambda: False)
    results = demo.run_demo(tmp_path / "out", tmp_path / "work")
    by_model = {r.summary["model"]: r.summary for r in results}
    assert set(by_model) == {b.name for b in demo.BASELINES}
    assert all(s["n_failed"] == 0 and s["n_clips"] == 2 for s in by_model.values())
    assert by_model["ground-truth"]["ssim"] == 1.0
    assert by_model["still-frame"]["ssim"] < by_model["audio-shift-5"]["ssim"] < 1.0
    assert by_model["degraded"]["psnr"] < by_model["audio-shift-5"]["psnr"]
    assert (tmp_path / "out" / "leaderboard.md").read_text().count("| measured |") == 4
