"""``follow_ups:``: a study's report gives each follow-up study a section from that study's own records, and
its notes and README status quote the follow-up's cells, run count and reading as placeholders. Runs are
faked (each job writes the summary the test chooses), so nothing trains."""

from __future__ import annotations

import pytest
from test_study import tiny_spec, tiny_study, write
from test_study_grid import scored_run

import pairgraph.study.execute as execute_mod
from pairgraph.errors import PairgraphError
from pairgraph.study import load_study, report, run_study


@pytest.fixture
def two_studies(tmp_path, monkeypatch):
    """``main`` (the paper-protocol study) names ``rescue`` (a grid with a trainability rule and a gated
    cell) as its follow-up; both have run."""
    write(tmp_path / "tiny.yaml", tiny_spec())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PAIRGRAPH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(execute_mod, "execute_job", scored_run)
    sub = tiny_study("rescue", grid=True, untrainable_below=50, description="Does the guide rescue it?")
    sub["cells"].append({**sub["cells"][0], "name": "cp_long", "when_unconverged": "cp"})
    write(tmp_path / "rescue.yaml", sub)
    main = tiny_study("main", follow_ups=[{"study": "rescue.yaml", "report": "docs/rescue.md",
                                           "notes": "Guided: {{mean cp/untrained}} against {{mean cp/baseline}}."}],
                      readme_status=("Rescue study: {{runs rescue}} runs, reading *{{reading rescue}}*, "
                                     "Δ {{delta rescue:cp/untrained}} ({{ci rescue:cp/untrained}})."))
    main["cells"][0]["notes"] = "The follow-up's guided arm: {{mean rescue:cp/untrained}}."
    path = write(tmp_path / "main.yaml", main)
    for name in ("rescue", "main"):
        run_study(tmp_path / f"{name}.yaml", echo=lambda m: None)
    return path


def test_the_report_gives_a_follow_up_its_section_from_its_own_records(two_studies, tmp_path):
    readme = write(tmp_path / "README.md", "x\n<!-- status:begin -->\n<!-- status:end -->\n"
                   "<!-- results:begin -->\n<!-- results:end -->\n")
    out = report(two_studies, tmp_path / "docs" / "results.md", readme=readme)
    text = out.read_text()
    section = text.split("## Follow-up studies", 1)[1].split("\n## ", 1)[0]
    assert "### `rescue`" in section and "Does the guide rescue it?" in section
    assert "full report [docs/rescue.md](rescue.md)" in section
    assert "Coverage: 2 of 2 arms complete; 8 finished runs, 0 diverged." in section
    assert "Not needed: cell cp_long (it runs only if cp's baseline was still improving" in section
    assert "**Notes.** Guided: 60.5 against 30.5." in section
    assert "#### Δ against lr (every seed at every lr)" in section  # its headings under the follow-up's own
    assert "![Δ against lr](figures/rescue/rescue-delta-vs-lr.png)" in section
    assert (tmp_path / "docs/figures/rescue/rescue-delta-vs-lr.png").is_file()
    assert "**Reading (the study file's rule):** rescue at CPU scale" in section
    assert "The follow-up's guided arm: 60.5." in text  # a cell note quoting the follow-up
    status = readme.read_text().split("<!-- status:begin -->\n", 1)[1].split("\n<!-- status:end -->", 1)[0]
    assert status.startswith("Rescue study: 8 runs, reading *rescue at CPU scale: where the baseline is untrainable")
    assert "Δ +30.0 (95% CI [+" in status
    # written twice: the same bytes
    first = text
    assert report(two_studies, tmp_path / "docs" / "results.md").read_text() == first


@pytest.mark.parametrize("follow_ups, words", [
    ([{"study": "nope.yaml"}], "follow-up study 'nope.yaml' not found"),
    ([{"study": "main.yaml"}], "is study 'main', named twice or the study itself"),
    ([{"study": "rescue.yaml"}, {"study": "rescue.yaml"}], "is study 'rescue', named twice"),
])
def test_a_bad_follow_up_is_a_one_line_error(two_studies, tmp_path, follow_ups, words):
    data = tiny_study("main", follow_ups=follow_ups)
    write(two_studies, data)
    with pytest.raises(PairgraphError) as e:
        report(load_study(two_studies), tmp_path / "r.md")
    assert words in e.value.message and "\n" not in e.value.message


def test_a_placeholder_naming_an_unknown_follow_up_is_a_one_line_error(two_studies, tmp_path):
    data = tiny_study("main", follow_ups=[{"study": "rescue.yaml"}])
    data["cells"][0]["notes"] = "{{reading other}}"
    write(two_studies, data)
    with pytest.raises(PairgraphError) as e:
        report(load_study(two_studies), tmp_path / "r.md")
    assert "no follow-up study 'other'" in e.value.message and "use one of rescue" in e.value.hint
