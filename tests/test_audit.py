"""The audit: a judge's verdicts on validated x-hat, audited metrics, resume, fmr audit."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import LR, identity_pre, scripted_world
from torch import nn

from fmr_bench import FmrBenchError, evaluate
from fmr_bench.cli import main
from fmr_bench.metrics.fmr import audit_counts
from fmr_bench.models import ImageClassifier
from fmr_bench.oracles import Oracle

# Sample i is first rejected by the oracle at step REJECT_AT[i]: steps = [0 (not validated), 1, 2, 3, 4, 10].
REJECT_AT = [1, 2, 3, 4, 5, 100]
BUDGET = 10


class ShiftedMeanModel(nn.Module):
    """Logits [0, value - 1.5 LR]: right on x-hat after 1 step, wrong from 2 steps on."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = x[:, 0].mean((1, 2)) - 1.5 * LR
        return torch.stack([torch.zeros_like(v), v], 1)


class ScriptedJudge(nn.Module):
    """Class 0 while the value is below 2.5 LR (x-hat after 0-2 steps), else class 1; p(y) as 3/4 or 1/4."""

    def __init__(self, calls: list | None = None) -> None:
        super().__init__()
        self.calls = calls

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calls is not None:
            self.calls.append(x.shape[0])
        first = x[:, 0].mean((1, 2)) < 2.5 * LR
        return torch.where(first[:, None], torch.tensor([1.0, -1.0]), torch.tensor([-1.0, 1.0])) * 0.5 * torch.log(
            torch.tensor(3.0))


def judge(calls=None) -> Oracle:
    return Oracle([ImageClassifier(ScriptedJudge(calls), identity_pre(4), class_names=["zero", "one"])],
                  "scripted-judge", "single")


def world():
    data, _, gen, oracle = scripted_world(REJECT_AT)
    model = ImageClassifier(ShiftedMeanModel(), identity_pre(4), class_names=["zero", "one"], spec="module:shifted")
    return data, model, gen, oracle


def run(out, audit=None, **kw):
    data, model, gen, oracle = world()
    return evaluate(model, data, generator=gen, oracle=oracle, out=out, budget=BUDGET, step_size=LR,
                    optimizer="sign", batch_size=4, audit=audit, **kw)


# steps [0, 1, 2, 3, 4, 10]: validated 5; the judge confirms steps 1, 2; the model is right after 1 step only
EXPECTED = {"n_audited": 5, "n_unaudited": 0, "n_confirmed": 2, "audit_validity": 40.0, "audit_pa": 50.0,
            "audit_fmr": 50.0, "audit_failures_confirmed": 25.0}


def _last_lines(path):
    rows = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        rows[row["id"]] = row
    return rows


def test_audit_counts_on_a_scripted_oracle_and_judge(tmp_path):
    res = run(tmp_path, audit=judge())
    assert [o.steps for o in sorted(res.outcomes, key=lambda o: o.index)] == [0, 1, 2, 3, 4, 10]
    m = res.metrics
    assert (m["sa"], m["vr"], m["pa"], m["fmr"]) == (100.0, pytest.approx(500 / 6), 20.0, 20.0)
    assert {k: m[k] for k in EXPECTED} == EXPECTED
    assert res.record["audit"]["metrics"] == {k: m[k] for k in EXPECTED}
    assert res.record["audit"]["judge"]["spec"] == "scripted-judge"
    assert res.record["audit"]["n_regenerated"] == 0  # every x-hat was judged as it finished
    rows = _last_lines(res.path / "samples.jsonl")
    for row in rows.values():
        verdict = (row["audit"] or {}).get("scripted-judge")
        if not row["validated"]:
            assert verdict is None
        else:
            ok = row["steps"] <= 2
            assert verdict == {"pred": 0 if ok else 1, "conf": pytest.approx(0.75 if ok else 0.25), "ok": ok}
    per_class = res.record["per_class"][0]
    assert per_class["audit_validity"] == 40.0 and per_class["n_audited"] == 5


def test_audited_metrics_recomputed_from_samples_jsonl(tmp_path):
    res = run(tmp_path, audit=judge())
    rows = list(_last_lines(res.path / "samples.jsonl").values())
    # plain arithmetic over the JSONL, independent of fmr_bench.metrics.fmr
    n = len(rows)
    sa = 100 * sum(r["clean_pred"] == r["target"] for r in rows) / n
    audited = [r for r in rows if r["validated"] and (r["audit"] or {}).get("scripted-judge")]
    confirmed = [r for r in audited if r["audit"]["scripted-judge"]["ok"]]
    wrong = [r for r in audited if r["final_pred"] != r["target"]]
    want = {
        "n_audited": len(audited), "n_confirmed": len(confirmed),
        "audit_validity": 100 * len(confirmed) / len(audited),
        "audit_pa": 100 * sum(r["final_pred"] == r["target"] for r in confirmed) / len(confirmed),
        "audit_failures_confirmed": 100 * sum(r["audit"]["scripted-judge"]["ok"] for r in wrong) / len(wrong),
    }
    want["audit_fmr"] = 100 * want["audit_pa"] / sa
    rec = json.loads((res.path / "record.json").read_text())
    for k, v in want.items():
        assert rec["metrics"][k] == pytest.approx(v), k


def test_audit_later_reuses_the_outcomes_and_regenerates_x_hat(tmp_path):
    plain = run(tmp_path)
    assert "audit" not in plain.record and "audit_validity" not in plain.metrics
    lines_before = (plain.path / "samples.jsonl").read_text().splitlines()
    calls, seen = [], []
    audited = run(tmp_path, audit=judge(calls), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(k, 5) for k in range(1, 6)]  # the regeneration reports its progress
    assert audited.path == plain.path  # the judge is not part of the run's identity
    assert [o.key() for o in audited.outcomes] == [o.key() for o in plain.outcomes]
    assert {k: audited.metrics[k] for k in EXPECTED} == EXPECTED
    assert audited.record["audit"]["n_regenerated"] == 5 and audited.record["audit"]["n_unreproduced"] == 0
    assert {k: audited.metrics[k] for k in plain.metrics} == plain.metrics
    lines = (plain.path / "samples.jsonl").read_text().splitlines()
    assert lines[:len(lines_before)] == lines_before and len(lines) == len(lines_before) + 5  # appended only
    assert sum(calls) == 5
    calls.clear()
    again = run(tmp_path, audit=judge(calls))  # nothing left to audit
    assert calls == [] and again.record["audit"]["n_regenerated"] == 0
    assert again.metrics == audited.metrics
    # another judge's verdicts sit beside the first one's
    other = Oracle([ImageClassifier(ScriptedJudge(), identity_pre(4), class_names=["zero", "one"])], "judge-2",
                   "single")
    both = run(tmp_path, audit=other)
    assert all(set(o.audit) == {"scripted-judge", "judge-2"} for o in both.outcomes if o.validated)


def test_interrupted_audit_resumes_with_what_is_left(tmp_path):
    run(tmp_path)
    calls = []

    class Stop(ScriptedJudge):
        def forward(self, x):
            if len(calls) == 2:
                raise KeyboardInterrupt
            return super().forward(x)

    stopping = Oracle([ImageClassifier(Stop(calls), identity_pre(4), class_names=["zero", "one"])],
                      "scripted-judge", "single")
    with pytest.raises(FmrBenchError, match="resume"):
        run(tmp_path, audit=stopping)
    calls2 = []
    res = run(tmp_path, audit=judge(calls2))
    assert sum(calls2) == 3 and res.record["audit"]["n_regenerated"] == 3
    assert {k: res.metrics[k] for k in EXPECTED} == EXPECTED


def test_a_sample_that_does_not_reproduce_is_left_unaudited_and_counted(tmp_path):
    plain = run(tmp_path)
    path = plain.path / "samples.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        if r["steps"] == 3:
            r["steps"] = 2  # as if the generator had changed since
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = run(tmp_path, audit=judge())
    a = res.record["audit"]
    assert a["n_unreproduced"] == 1 and a["n_regenerated"] == 4 and len(a["unreproduced"]) == 1
    assert res.metrics["n_audited"] == 4 and res.metrics["n_unaudited"] == 1


def test_audit_counts_kernel_edge_cases():
    assert audit_counts([])["audit_validity"] is None
    # nothing confirmed: PA and FMR undefined, validity 0
    m = audit_counts([(True, True, False, False), (True, False, True, None)])
    assert (m["audit_validity"], m["audit_pa"], m["audit_fmr"], m["audit_failures_confirmed"]) == (0.0, None, None, 0.0)
    # SA 0: FMR undefined
    assert audit_counts([(False, True, True, True)])["audit_fmr"] is None


# -- fmr audit ---------------------------------------------------------------------------------------

def test_fmr_audit_a_digits_run_with_the_oracle_itself_confirms_every_image(tmp_path, capsys):
    # The oracle as judge, with the argmax rule: every validated x-hat must be confirmed.
    args = ["--model", "builtin:digits-cnn", "--limit", "6", "--budget", "3", "--out", str(tmp_path), "--quiet",
            "--no-grid", "--device", "cpu"]
    assert main(["evaluate", *args]) == 0
    (folder,) = tmp_path.iterdir()
    capsys.readouterr()
    assert main(["audit", str(folder), "--judge", "builtin:digits-clip", "--quiet", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    rec = json.loads((folder / "record.json").read_text())
    assert rec["metrics"]["n_audited"] == rec["metrics"]["n_validated"] > 0
    assert rec["metrics"]["audit_validity"] == 100.0
    assert rec["metrics"]["audit_pa"] == rec["metrics"]["pa"]
    assert "audit by judge builtin:digits-clip" in out
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no second run folder
    # and the same audit through evaluate --audit on the finished run reuses it
    assert main(["evaluate", *args, "--audit", "builtin:digits-clip"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


@pytest.mark.parametrize("argv,fragment", [
    (["audit", "{tmp}", "--judge", "builtin:digits-clip"], "holds no record.json"),
    (["audit", "{tmp}/nope", "--judge", "builtin:digits-clip"], "is not a folder"),
    (["audit", "{run}", "--judge", "nosuch:x"], "unknown oracle source"),
    (["audit", "{run}", "--judge", "builtin:digits-clip", "--batch-size", "0"], "--batch-size takes a whole number >= 1"),
])
def test_fmr_audit_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, fragment):
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    (run_folder / "record.json").write_text(json.dumps({"evaluator": "fmr"}))
    code = main([a.format(tmp=tmp_path, run=run_folder) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and fragment in err, err


def test_fmr_audit_refuses_a_run_whose_settings_now_name_another_folder(tmp_path, capsys):
    args = ["--model", "builtin:digits-cnn", "--limit", "3", "--budget", "2", "--out", str(tmp_path), "--quiet",
            "--no-grid", "--device", "cpu"]
    assert main(["evaluate", *args]) == 0
    (folder,) = tmp_path.iterdir()
    moved = tmp_path / "renamed"
    folder.rename(moved)
    assert main(["audit", str(moved), "--judge", "builtin:digits-clip", "--device", "cpu"]) == 2
    assert "now name another run" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["renamed"]  # nothing ran


def test_audit_of_an_export_folder_matches_the_in_run_audit(tmp_path):
    from fmr_bench.studies.audit import audit_export
    from fmr_bench.studies.export import export_run

    data, model, gen, oracle = world()
    exp = export_run(model, data, tmp_path / "export", generator=gen, oracle=oracle, out=tmp_path / "runs",
                     budget=BUDGET, step_size=LR, optimizer="sign", batch_size=4, write_grid=False)
    report = audit_export(exp.path, judge())
    assert {k: report["metrics"][k] for k in EXPECTED} == EXPECTED
    written = json.loads((exp.path / "audit-scripted-judge.json").read_text())
    assert written["metrics"] == report["metrics"] and len(written["samples"]) == 5


def test_grid_shows_oracle_and_judge_verdicts(tmp_path, monkeypatch):
    from fmr_bench import plots as viz

    texts = []
    import matplotlib.axes

    orig = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text", lambda self, x, y, t, *a, **k: (texts.append(t),
                                                                                     orig(self, x, y, t, *a, **k))[1])
    res = run(tmp_path, audit=judge())
    assert (res.path / "grid.png").stat().st_size > 1000
    text = "\n".join(texts)
    assert "oracle accepts, p(y)=" in text and "oracle rejected step 1" in text
    assert "judge: zero (= y), p(y)=0.75" in text and "judge: one (not y), p(y)=0.25" in text
    assert viz.verdict_lines(res.outcomes[0], ["zero", "one"], None).count("judge") == 0


def test_a_judge_for_other_classes_is_refused_before_the_run(tmp_path):
    from fmr_bench.errors import ClassMappingError

    data, model, gen, oracle = world()
    with pytest.raises(ClassMappingError, match="judge builtin:digits-cnn scores 10 classes but the dataset has 2"):
        evaluate(model, data, generator=gen, oracle=oracle, out=tmp_path, budget=2, step_size=LR,
                 audit="builtin:digits-cnn")
    assert not any(tmp_path.iterdir())


def test_disk_full_during_a_later_audit_keeps_verdicts_and_resumes(tmp_path, monkeypatch):
    import errno

    from fmr_bench.results import rundir as results
    from fmr_bench.errors import OutputError

    run(tmp_path)
    real = results.OutcomeWriter.write
    writes = []

    def full_after_two(self, outcome, *args):
        if len(writes) == 2:
            raise OutputError(f"disk full while writing {self.path} ({errno.errorcode[errno.ENOSPC]})")
        writes.append(outcome.id)
        real(self, outcome, *args)

    monkeypatch.setattr(results.OutcomeWriter, "write", full_after_two)
    with pytest.raises(OutputError, match="disk full"):
        run(tmp_path, audit=judge())
    monkeypatch.setattr(results.OutcomeWriter, "write", real)
    res = run(tmp_path, audit=judge())
    assert res.record["audit"]["n_regenerated"] == 3  # the two saved verdicts were kept
    assert {k: res.metrics[k] for k in EXPECTED} == EXPECTED


def _digits_run(tmp_path):
    args = ["--model", "builtin:digits-cnn", "--limit", "4", "--budget", "2", "--out", str(tmp_path / "runs"),
            "--quiet", "--no-grid", "--device", "cpu"]
    assert main(["evaluate", *args]) == 0
    (folder,) = (tmp_path / "runs").iterdir()
    return folder


def _last_lines_of(text):
    return {row["id"]: row for row in map(json.loads, text.splitlines())}


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file() and p.name != ".lock"}


def test_fmr_audit_of_a_read_only_run_says_pass_out_and_out_writes_an_audited_copy(tmp_path, capsys, monkeypatch):
    import os

    from fmr_bench.studies import audit as study

    folder = _digits_run(tmp_path)
    before = _snapshot(folder)
    real_access = os.access  # a read-only mount, as root cannot be kept out by permissions
    monkeypatch.setattr(study.os, "access", lambda p, mode: False if str(p).startswith(str(folder)) and mode == os.W_OK
                        else real_access(p, mode))
    capsys.readouterr()
    assert main(["audit", str(folder), "--judge", "builtin:digits-clip", "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "read-only" in err and "pass --out DIR" in err
    assert _snapshot(folder) == before
    # --out: the run is only read; the copy holds the run's files plus the verdicts
    out = tmp_path / "audited"
    assert main(["audit", str(folder), "--judge", "builtin:digits-clip", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    assert f"audited copy: {out / folder.name}" in capsys.readouterr().out
    assert _snapshot(folder) == before
    copy = json.loads((out / folder.name / "record.json").read_text())
    original = json.loads(before["record.json"])
    assert copy["metrics"]["n_audited"] == original["metrics"]["n_validated"] > 0
    assert {k: copy["metrics"][k] for k in original["metrics"]} == original["metrics"]
    assert (out / folder.name / "settings.json").read_bytes() == before["settings.json"]
    lines = (out / folder.name / "samples.jsonl").read_text()
    assert lines.startswith(before["samples.jsonl"].decode())  # the run's lines, then the verdicts
    # again: the copy is complete and audited; nothing is copied over it or generated again
    assert main(["audit", str(folder), "--judge", "builtin:digits-clip", "--device", "cpu", "--quiet",
                 "--out", str(out)]) == 0
    again = json.loads((out / folder.name / "record.json").read_text())
    assert again["audit"]["n_regenerated"] == 0 and again["metrics"] == copy["metrics"]
    assert _last_lines(out / folder.name / "samples.jsonl") == _last_lines_of(lines)
    assert _snapshot(folder) == before


def test_fmr_audit_of_a_writable_run_says_what_it_audits_and_where(tmp_path, capsys):
    folder = _digits_run(tmp_path)
    capsys.readouterr()
    assert main(["audit", str(folder), "--judge", "builtin:digits-clip", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    n = json.loads((folder / "record.json").read_text())["metrics"]["n_validated"]
    assert "reused finished run" not in captured.err
    assert f"audit of {folder} by judge builtin:digits-clip: generating the x-hat of {n} of its {n} validated " \
           "samples again" in captured.err.replace("\n", " ")
    assert f"audited in place: {folder}" in captured.out
    assert main(["audit", str(folder), "--judge", "builtin:digits-clip", "--device", "cpu"]) == 0
    assert f"all {n} validated samples already have its verdict" in capsys.readouterr().err.replace("\n", " ")
