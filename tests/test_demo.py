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


def test_demo_with_the_shipped_mini_observers_orders_the_baselines(tmp_path):
    assert demo.mini_observers_available()
    results = demo.run_demo(tmp_path / "out", tmp_path / "work", n_clips=4)
    s = {r.summary["model"]: r.summary for r in results}
    assert all(row["protocol"] == "mini" and row["n_failed"] == 0 for row in s.values())
    gt, still, shifted = s["ground-truth"], s["still-frame"], s["audio-shift-5"]
    assert still["wer1"] > gt["wer1"] + 30          # no lip motion: the lip reader cannot read it
    assert shifted["wer1"] <= gt["wer1"] + 10       # same video: still readable
    assert shifted["lse_c"] < gt["lse_c"] and shifted["lse_d"] > gt["lse_d"]  # but out of sync
    assert abs(shifted["av_offset"]) > 3 > abs(gt["av_offset"])
    # the bundled TalkLip-mini generator: its lips follow the audio, unlike the still frame
    mini = s["talklip-mini"]
    assert mini["lse_c"] > still["lse_c"] + 0.5 and mini["lse_d"] < still["lse_d"] - 2
    assert gt["wer1"] < mini["wer1"] and mini["ssim"] < 1.0
