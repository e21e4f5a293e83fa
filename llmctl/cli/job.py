"""`llmctl job`: submit and track rendered jobs (issue #5)."""

from __future__ import annotations

import click

from llmctl.cli.common import json_option, print_json, print_table


@click.group("job")
def group() -> None:
    """Submit, track and cancel jobs."""


@group.command("submit")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--allow-edited", is_flag=True, help="Submit even if the script changed since rendering.")
@json_option
def submit(run_dir, allow_edited, as_json) -> None:
    """Submit a reviewed run folder (RUN_DIR, made by a launch command's --dry-run) exactly as rendered."""
    from llmctl.jobs.launch import submit_run

    run, job_id = submit_run(run_dir, allow_edited=allow_edited)
    if as_json:
        print_json({"run_dir": str(run.path), "backend": run.load_spec().backend, "job_id": job_id})
        return
    click.echo(f"submitted job {job_id}: {run.path}")


@group.command("status")
@click.argument("run", required=False)
@click.option("--all", "all_users", is_flag=True, help="Without RUN: every user's jobs, not only yours.")
@json_option
def status(run, all_users, as_json) -> None:
    """Show a job's state (RUN: run folder or job id; none: each of your jobs)."""
    from llmctl.jobs import track

    if run is None:
        rows = []
        for e in track.list_jobs(all_users):
            if e["present"]:
                try:
                    rows.append(track.status(e["run_dir"]))
                except Exception as err:  # one broken entry must not hide the others
                    rows.append({**e, "state": f"? ({err})"})
        if as_json:
            print_json(rows)
        else:
            print_table(rows, ["job_id", "backend", "state", "restarts", "name", "run_dir"])
        return
    st = track.status(run)
    if as_json:
        print_json(st)
    else:
        click.echo(f"{_state_words(st)} {st['run_dir']}")
        prog = st.get("progress")
        if prog and prog.get("started"):
            click.echo(_progress_line(prog))


def _state_words(st: dict) -> str:
    """'123 RUNNING restarts=1 (last: NODE_FAIL) exit=-', or '... exit=0 signal=9'."""
    words = f"{st['job_id']} {st['state']} restarts={st.get('restarts', 0)}"
    if st.get("last_state"):
        words += f" (last: {st['last_state']})"
    words += f" exit={'-' if st.get('exit_code') is None else st['exit_code']}"
    if st.get("exit_signal"):
        words += f" signal={st['exit_signal']}"
    return words


def _progress_line(p: dict) -> str:
    """'step 120/300  loss 5.12  val 5.30  3,100 tok/s  MFU 9.1%  ETA 58s'."""
    def fmt(key: str, text: str) -> str:
        return text.format(p[key]) if p.get(key) is not None else ""

    parts = [f"step {p.get('step')}/{p.get('max_steps')}", fmt("loss", "loss {:.4f}"),
             fmt("val_loss", "val {:.4f}"), fmt("tokens_per_s", "{:,.0f} tok/s"),
             fmt("mfu", "MFU {:.1%}"), fmt("eta_s", "ETA {:.0f}s"),
             "finished" if p.get("finished") else ""]
    return "  ".join(x for x in parts if x)


@group.command("logs")
@click.argument("run")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new lines.")
def logs(run, follow) -> None:
    """Print a job's logs (RUN: run folder or job id)."""
    from llmctl.jobs import track

    if follow:
        for chunk in track.follow(run):
            click.echo(chunk, nl=False)
        return
    files = track.log_files(run)
    if not files:
        click.echo("(no logs yet)", err=True)
    for f in files:
        if len(files) > 1:
            click.echo(f"==> {f} <==")
        click.echo(f.read_text(encoding="utf-8", errors="replace"), nl=False)


@group.command("cancel")
@click.argument("run")
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=120, show_default=True,
              help="Seconds to wait for the scheduler to report the job ended.")
@json_option
def cancel(run, wait_s, as_json) -> None:
    """Cancel a job (RUN: run folder or job id) in any state (pending, held, running, requeued); it is
    not requeued.

    Reports CANCELLED once the scheduler does; exits 1 if it has not within --wait.
    """
    from llmctl.jobs import track

    st = track.cancel(run, wait_s=wait_s)
    if as_json:
        print_json(st)
    elif st["cancel"] == "cancelled":
        click.echo(f"{st['job_id']} CANCELLED")
    elif st["cancel"] == "already ended":
        click.echo(f"{st['job_id']} {st['state']} (already ended; nothing to cancel)")
    elif st["cancel"] == "ended":
        click.echo(f"{st['job_id']} {st['state']} (it ended before the cancel took effect)")
    if st["cancel"] == "unconfirmed":
        click.echo(f"error: job {st['job_id']}: cancel requested, but after {st['waited_s']:.0f} s the "
                   f"{st['backend']} scheduler still reports {st['state']}, not CANCELLED\n"
                   f"hint: check again with `llmctl job status {st['job_id']}`", err=True)
        raise click.exceptions.Exit(1)


@group.command("list")
@click.option("--all", "all_users", is_flag=True,
              help="Every user's jobs in the index (a shared LLMCTL_STATE_DIR), not only yours.")
@json_option
def list_(all_users, as_json) -> None:
    """List the jobs you submitted with llmctl (--all: everyone's in the index)."""
    from llmctl.jobs import track

    rows = track.list_jobs(all_users)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ["job_id", "backend", "name", "user", "submitted", "run_dir"] if all_users
                    else ["job_id", "backend", "name", "submitted", "run_dir"])
