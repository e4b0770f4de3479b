"""The transfer benchmark's bookkeeping: which runs form a leave-one-out, and which lever each belongs to."""

from __future__ import annotations

import json

from benchmarks import transfer


def _row(preset: str, config: str, rate: float | None) -> dict:
    return {"preset": preset, "config": config, "held_out_rate": rate, "median_face_lpips_native": 0.05,
            "max_face_lpips_native": 0.05, "median_whole_photo_lpips_native": 0.005, "two_unoptimized_within_noise": 0.0,
            "weak_photos": 1, "photos": 5, "median_seconds": 1.0, "held_out": [], "targets": [],
            "rates": {f: [1, 2] for f in transfer.FAMILIES}}


def test_configurations_hold_each_family_out_once():
    loo = transfer.configurations(["loo"])
    assert [label for label, _ in loo] == [f"without {transfer.LABEL[f]}" for f in transfer.FAMILIES]
    for (_, targets), held in zip(loo, transfer.FAMILIES):
        assert held not in targets and len(targets) == 3


def test_each_lever_gets_its_own_leave_one_out_mean(tmp_path, monkeypatch):
    """Rows measured with a lever (--set) are averaged apart from the preset's plain rows."""
    monkeypatch.setattr(transfer, "RESULTS", tmp_path)
    monkeypatch.setattr(transfer, "write_results", lambda name, data, md: (tmp_path / f"{name}.json").write_text(json.dumps(data)))
    plotted = []  # matplotlib is a benchmark dependency, not a test one: the plot's input is what is checked
    monkeypatch.setattr(transfer, "frontier_plot", lambda rows, dest: plotted.append((len(rows), dest.name)))
    rows = [_row("panic", f"without {transfer.LABEL[f]}", r) for f, r in zip(transfer.FAMILIES, (1.0, 0.0, 0.5, 0.2))]
    rows += [_row("panic", f"without {transfer.LABEL[f]}, balance=shortfall", 0.0) for f in transfer.FAMILIES]
    rows += [_row("panic", "all four", None)]
    assert transfer.setting(rows[0]) == "panic" and transfer.setting(rows[4]) == "panic, balance=shortfall"
    transfer.report("t", rows, ["a/b.jpg"], 1)
    summary = json.loads((tmp_path / "t.json").read_text())["summary"]
    assert summary["panic"]["leave_one_out_mean"] == 0.425 and summary["panic"]["configs"] == 4
    assert summary["panic, balance=shortfall"]["leave_one_out_mean"] == 0.0
    assert plotted == [(9, "t_frontier.png")]


def test_a_run_that_held_no_model_out_draws_no_empty_plot(tmp_path, monkeypatch):
    """An all-four run alone (or one cut short after it) has no held-out point to plot."""
    written = {}
    monkeypatch.setattr(transfer, "write_results", lambda name, data, md: written.update({name: md}))
    plotted = []
    monkeypatch.setattr(transfer, "frontier_plot", lambda rows, dest: plotted.append(dest.name))
    transfer.report("t", [_row("panic", "all four", None)], ["a/b.jpg"], 1)
    assert plotted == [] and "No frontier plot" in written["t"]
    transfer.report("t", [_row("panic", "all four", None), _row("panic", "without dlib", 0.1)], ["a/b.jpg"], 1)
    assert plotted == ["t_frontier.png"] and "Frontier plot: t_frontier.png" in written["t"]


def test_a_merged_run_labelled_is_a_lever_of_its_own():
    """Two revisions of a preset merged with labels are two points, each lever kept after the label."""
    plain = _row("panic", "without dlib", 0.8)
    lever = _row("panic", "without dlib, feature_dropout=0.01", 0.9)
    assert transfer.setting(transfer.labelled(plain, "eyes guarded")) == "panic, eyes guarded"
    assert transfer.setting(transfer.labelled(lever, "eyes guarded")) == "panic, eyes guarded feature_dropout=0.01"
    assert transfer.labelled(plain, "") is plain
    assert transfer.labelled(plain, "x")["config"].startswith("without dlib")  # still a leave-one-out run
