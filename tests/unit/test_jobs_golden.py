"""jobs/ holds the current rendering of every shipped site x backend x kind, and
rendering is deterministic (same spec, same bytes, in another process too)."""

from __future__ import annotations

import subprocess
import sys

from llmctl.jobs import golden
from llmctl.jobs.spec import JobSpec
from llmctl.schedulers import get_scheduler


def test_golden_files_are_current():
    d = golden.diff()
    assert d == "", "rendered scripts changed; review, then `python -m llmctl.jobs.golden write`:\n" + d


def test_every_shipped_site_and_kind_has_goldens():
    rendered = golden.render_all()
    sites = {p.parts[0] for p in rendered}
    from llmctl.resources import data_dir
    assert sites == {p.stem for p in data_dir("site-configs").glob("*.toml")}
    for site, backend, kind, _ in golden.cases():
        assert any(str(p).startswith(f"{site}/{backend}/{kind}.") for p in rendered)


def test_rendering_is_deterministic_across_processes(tmp_path):
    _, backend, _, spec = next(c for c in golden.cases() if c[1] == "slurm")
    first = get_scheduler(backend).render(spec).script
    again = get_scheduler(backend).render(JobSpec.model_validate_json(spec.model_dump_json())).script
    assert first == again
    code = ("import sys; from llmctl.jobs.spec import JobSpec; from llmctl.schedulers import get_scheduler;"
            "s = JobSpec.model_validate_json(sys.stdin.read());"
            "sys.stdout.write(get_scheduler(s.backend).render(s).script)")
    out = subprocess.run([sys.executable, "-c", code], input=spec.model_dump_json(), capture_output=True,
                         text=True, check=True)
    assert out.stdout == first


def test_golden_check_command_reports_a_stale_file(tmp_path):
    golden.write(tmp_path)
    assert golden.diff(tmp_path) == ""
    victim = next(tmp_path.glob("*/slurm/train.sh"))
    victim.write_text(victim.read_text().replace("--requeue", "--no-requeue"))
    d = golden.diff(tmp_path)
    assert "-#SBATCH --no-requeue" in d and "+#SBATCH --requeue" in d
