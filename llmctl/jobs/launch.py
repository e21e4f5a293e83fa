"""Library entry points: make a run folder for a job, and submit one.

`prepare_train_job`, `prepare_eval_job` and `prepare_serve_job` resolve a job,
render it and write its run folder; `submit_run` submits a (reviewed) run folder
exactly as it is on disk. The CLI commands are thin wrappers; the eval and serve
issues call these functions.

Nothing is written until every check has passed, and the folder appears whole:
it is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from llmctl.errors import LlmctlError
from llmctl.fsutil import atomic_write_text
from llmctl.jobs.resolve import JobRequest, resolve
from llmctl.jobs.rundir import RunDir, sha256_file


def default_run_dir(name: str) -> Path:
    """runs/<name>-<UTC timestamp> under the current folder."""
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:60] or "job"
    return Path.cwd() / "runs" / f"{safe}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def _load_plan(path: str | Path) -> tuple[Any, str]:
    from llmctl.config.base import load_config
    from llmctl.config.plan import PlanFile
    import tomli_w

    plan = load_config(path, PlanFile)
    p = Path(path)
    text = p.read_text(encoding="utf-8") if p.suffix.lower() == ".toml" else tomli_w.dumps(plan.to_data())
    return plan, text


def _train_config(config_path: Optional[str], plan: Any, data_path: Optional[str],
                  prov: Any = None, plan_path: Optional[str] = None, config_source: Optional[str] = None
                  ) -> dict[str, Any]:
    """The resolved training config (as data): the file, else one made from the plan.

    The plan's layout fills what the file leaves to `strategy = "auto"`; --data
    overrides the file's data config. `prov` (a Provenance) records where each value
    came from as it is merged (llmctl.jobs.provenance).
    """
    from llmctl.config.base import load_config, read_data, validate_data
    from llmctl.config.train import TrainConfig
    from llmctl.jobs.provenance import Provenance, flatten

    prov = prov if prov is not None else Provenance()
    plan_src = f"plan {plan_path}" if plan_path else "plan"
    if config_path:
        cfg = load_config(config_path, TrainConfig)
        data = cfg.to_data()
        where = str(config_path)
        _refuse_plan_conflicts(cfg, config_path, plan)
        given = flatten(read_data(config_path))  # the keys the file sets (the rest: defaults)
        prov.set_all(given.items(), config_source or f"train config {config_path}")
    elif plan is not None:
        model = plan.inputs.model
        data = {"model": {"name": Path(model).stem, "config_file": model}}
        where = "(made from the plan)"
        prov.set_all(flatten(data).items(), plan_src)
    else:
        raise LlmctlError("a training job needs --config or --plan")
    if plan is not None and data.get("parallel", {}).get("strategy", "auto") == "auto":
        par = plan.parallelism
        layout = {"tp": par.tp, "pp": par.pp, "cp": par.cp, "zero_stage": par.zero_stage,
                  "micro_batch_size": par.micro_batch, "global_batch_size": plan.inputs.global_batch}
        data.setdefault("parallel", {}).update(layout)
        data.setdefault("data", {})["seq_len"] = plan.inputs.seq_len
        prov.set_all([(f"parallel.{k}", v) for k, v in layout.items()] + [("data.seq_len", plan.inputs.seq_len)],
                     plan_src)
    if data_path:
        data.setdefault("data", {})["config_file"] = str(Path(data_path).absolute())
        prov.set("data.config_file", data["data"]["config_file"], "flag --data")
    out = validate_data(data, TrainConfig, where).to_data()
    if out["parallel"]["tp"] == 1:
        out["parallel"].pop("sequence_parallel", None)  # it means nothing without tensor parallelism
        prov.unused("parallel.sequence_parallel", "tensor parallelism is off (tp = 1)")
    prov.settle(flatten(out))
    return out


# What a plan decides and a training config may also say: (section, key, plan's field, words).
_PLAN_SHARED = (("parallel", "global_batch_size", "global_batch", "global batch"),
                ("data", "seq_len", "seq_len", "sequence length"))


def _refuse_plan_conflicts(cfg: Any, config_path: str, plan: Any) -> None:
    """A training config and a plan that disagree on the global batch or the sequence
    length: an error naming both values (the plan was solved for its own, so neither may
    silently win). Values the file leaves to its defaults are the plan's to fill."""
    if plan is None or cfg.parallel.strategy != "auto":
        return
    problems = []
    for section, key, field, words in _PLAN_SHARED:
        part = getattr(cfg, section)
        if key not in part.model_fields_set:
            continue
        mine, planned = getattr(part, key), getattr(plan.inputs, field)
        if mine != planned:
            problems.append(f"{section}.{key} = {mine} in {config_path}, but the plan was solved for "
                            f"{words} {planned}")
    if problems:
        raise LlmctlError("the training config and the plan disagree: " + "; ".join(problems),
                          hint=f"compute the plan from this config (`llmctl plan compute ... --train "
                               f"{config_path}`), or change the config to the plan's values")


# The training config's fields that name files the job reads (section, key).
CONFIG_PATHS = (("model", "config_file"), ("data", "config_file"), ("init", "from"))


def config_for_job(data: dict[str, Any], pmap: Any) -> str:
    """The training config as TOML, its absolute paths as the job sees them (refused if it cannot)."""
    import copy

    import tomli_w

    out = copy.deepcopy(data)
    for section, key in CONFIG_PATHS:
        value = (out.get(section) or {}).get(key)
        if isinstance(value, str) and value.startswith("/"):
            out[section][key] = pmap.to_job(value, f"{section}.{key}")
    return tomli_w.dumps(out)


def _write_run(run: RunDir, dry: Any, files: dict[str, str]) -> None:
    """Write the run folder whole: into a temporary sibling, then one rename."""
    if run.path.exists() and any(run.path.iterdir()):
        raise LlmctlError(f"{run.path}: run folder exists and is not empty",
                          hint="choose another --run-dir (or remove the old one)")
    run.path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.path.name}.", dir=run.path.parent))
    try:
        staged = RunDir(tmp)
        written = []
        for rel, text in files.items():
            p = staged.path / rel
            atomic_write_text(p, text)
            written.append(p)
        script = staged.script(dry.spec.backend)
        atomic_write_text(script, dry.script, mode=0o755)
        written.append(script)
        spec_path = staged.spec_file
        atomic_write_text(spec_path, dry.spec.model_dump_json(indent=2) + "\n")
        written.append(spec_path)
        staged.logs.mkdir()
        staged.checkpoints.mkdir()
        staged.write_manifest(written, dry.spec.command, dry.spec.backend)
        if run.path.exists():
            run.path.rmdir()
        tmp.rename(run.path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def prepare(req: JobRequest, site_ref: Optional[str] = None, plan: Any = None,
            files: Optional[dict[str, Any]] = None,
            resolved: Optional[dict[str, Any]] = None) -> tuple[RunDir, Any]:
    """Resolve, render and write a run folder; returns (RunDir, DryRun). Submits nothing.

    `resolved` (`{"train": [tables], "program": table, "given": {...}}` from the caller's own
    merging) goes with the job settings' sources into the folder's resolved.json."""
    from llmctl.schedulers import get_scheduler
    from llmctl.sites import load_site

    from llmctl.jobs.paths import PathMap

    apply_settings(req)
    site, site_path = load_site(site_ref or _default_site(req.backend), req.site_overrides)
    spec = resolve(site, req, plan)
    spec = spec.model_copy(update={"site_file": str(Path(site_path).absolute())})
    dry = get_scheduler(spec.backend).render(spec)
    # A file's text may depend on the site's mounts (paths as the job sees them).
    pmap = PathMap.for_site(site)
    texts = {rel: (v(pmap) if callable(v) else v) for rel, v in (files or {}).items()}
    texts["resolved.json"] = _resolved_json(req, spec, site_ref, site_path, resolved or {})
    run = RunDir(req.run_dir)
    _write_run(run, dry, texts)
    return run, dry


def _resolved_json(req: JobRequest, spec: Any, site_ref: Optional[str], site_path: Any,
                   resolved: dict[str, Any]) -> str:
    """resolved.json: every effective setting with its source (llmctl.jobs.provenance)."""
    import json

    from llmctl.config.base import read_data
    from llmctl.jobs import provenance

    site_data = read_data(site_path) if spec.overrides else None
    job = provenance.job_table(spec, req.sources, site_data, site_ref, resolved.get("given"), resolved.get("plan"))
    doc = provenance.document(req.kind, req.run_dir, job, resolved.get("train"), resolved.get("program"))
    return json.dumps(doc, indent=2, default=str) + "\n"


def _settings(settings: Optional[dict[str, Any]]) -> dict[str, Any]:
    """The per-user flags a JobRequest takes (account, qos, reservation, mail_user, mail_type, --set)."""
    out = {k: v for k, v in (settings or {}).items() if v not in (None, (), []) and k != "given"}
    for key in ("mail_type", "overrides"):
        if key in out:
            out[key] = list(out[key])
    return out


def apply_settings(req: JobRequest) -> None:
    """Fill `req`'s per-user settings: flag (or --set) > project file > user file (the site
    comes last, in resolve); the other --set keys become `req.site_overrides`."""
    from llmctl.config import overrides
    from llmctl.config.user import merge

    flags = {"account": req.account, "qos": req.qos, "reservation": req.reservation,
             "partition": req.partition, "time": req.time, "mail_user": req.mail_user,
             "mail_type": req.mail_type}
    job_set, site_pairs = overrides.split(overrides.parse(req.overrides))
    req.site_overrides = dict(site_pairs)
    for key, value in job_set.items():
        given = flags.get(key)
        if given not in (None, []) and given != value:
            flag = "--" + key.replace("_", "-")
            raise LlmctlError(f"--set {key}={overrides.shown(value)} and {flag} {overrides.shown(given)} "
                              "disagree", hint=f"give {key} once")
        flags[key] = value
    values, sources = merge(flags)
    for key in flags:
        setattr(req, key, values.get(key, [] if key == "mail_type" else None))
    req.sources = {k: ("flag --set" if k in job_set and v == "flag" else v) for k, v in sources.items()}


def _default_site(backend: str) -> str:
    if backend in ("local", "mpi"):
        return "local"
    from llmctl.sites import list_sites

    names = sorted({e["name"] for e in list_sites() if e["scheduler"] == backend})
    raise LlmctlError(f"--launcher {backend} needs --site",
                      hint=f"sites with scheduler {backend!r}: {', '.join(names) or '(none)'}")


def run_name(name: str, run_dir: str) -> str:
    """The job's name without --name: its run folder's (runs/train-20260101-120000), so that
    `squeue` tells runs apart; the kind when the folder's name is not plain text."""
    from llmctl.config.base import check_name

    if name not in ("train", "eval", "serve-batch", "serve-persistent"):
        return name  # given with --name
    try:
        return check_name(Path(run_dir).name)
    except ValueError:
        return name


def job_name(name: Optional[str], default: str) -> str:
    """--name, checked before anything is written (it lands in the script and in terminals)."""
    if name is None:
        return default
    from llmctl.config.base import check_name

    try:
        return check_name(name)
    except ValueError as e:
        raise LlmctlError(f"--name: {e}", hint="a job name is plain printable text") from e


def _program_run_dir(run_dir: Optional[str | Path], name: str) -> str:
    rd = str(Path(run_dir).expanduser().absolute() if run_dir else default_run_dir(name))
    # The run folder lands in one-line scheduler directives (#SBATCH --output=...),
    # where a newline cannot be quoted; refuse it rather than mangle the path.
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in rd):
        raise LlmctlError(f"run folder {rd!r} contains a control character (e.g. a newline)",
                          hint="choose a --run-dir without control characters")
    return rd


def train_program(run_dir: str) -> list[str]:
    """What each training rank runs (after the interpreter)."""
    return ["-m", "llmctl.train", "--run-dir", run_dir]


def eval_program(run_dir: str, checkpoint: str, suite: Optional[str] = None,
                 output: Optional[str] = None, tasks: Optional[str] = None,
                 limit: Optional[int] = None, batch_size: Optional[int] = None) -> list[str]:
    program = ["-m", "llmctl", "eval", "run", "--checkpoint", str(Path(checkpoint).absolute()),
               "--output", str(Path(output).absolute()) if output else str(Path(run_dir) / "results.json")]
    if suite:
        program += ["--suite", str(Path(suite).absolute())]
    if tasks:
        program += ["--tasks", tasks]
    if limit is not None:
        program += ["--limit", str(int(limit))]
    if batch_size is not None:
        program += ["--batch-size", str(int(batch_size))]
    return program


def serve_program(kind: str, run_dir: str, artifact: str, input_path: Optional[str] = None,
                  output_path: Optional[str] = None, port: int = 8080,
                  config_path: Optional[str] = None, mpi_mode: Optional[str] = None) -> list[str]:
    art = str(Path(artifact).absolute())
    if kind == "serve-batch":
        if not input_path:
            raise LlmctlError("a serve-batch job needs an input file")
        out = str(Path(output_path).absolute()) if output_path else str(Path(run_dir) / "output.jsonl")
        program = ["-m", "llmctl", "serve", "batch", "--artifact", art,
                   "--input", str(Path(input_path).absolute()), "--output", out]
        if config_path:
            program += ["--config", str(Path(config_path).absolute())]
        return program
    # Bind all interfaces: the client runs on another host than the compute node.
    program = ["-m", "llmctl", "serve", "start", "--artifact", art, "--host", "0.0.0.0",
               "--port", str(port)]
    if config_path:
        program += ["--config", str(Path(config_path).absolute())]
    if mpi_mode:
        program += ["--mpi-mode", mpi_mode]
    return program


def prepare_train_job(*, plan_path: Optional[str], config_paths: Sequence[str] = (),
                      data_path: Optional[str] = None, launcher: str = "local",
                      site: Optional[str] = None, nodes: Optional[int] = None,
                      gpus_per_node: Optional[int] = None, time_limit: Optional[str] = None,
                      name: Optional[str] = None, after: Sequence[str] = (),
                      partition: Optional[str] = None, debug_env: bool = False,
                      run_dir: Optional[str] = None, array_parallel: Optional[int] = None,
                      command: str = "", settings: Optional[dict[str, Any]] = None) -> tuple[RunDir, Any]:
    """A training job: several configs make an array, one task per config."""
    plan = plan_text = None
    if plan_path:
        plan, plan_text = _load_plan(plan_path)
    from llmctl.jobs.provenance import Provenance
    from llmctl.scaffold import project_train_config

    configs: list[Optional[str]] = list(config_paths)
    config_source = None
    if not configs:
        found = project_train_config()  # inside a scaffolded project: its configs/train.toml
        configs = [str(found) if found else None]
        config_source = f"train config {found} (project default)" if found else None
    provs = [Provenance() for _ in configs]
    rendered = [_train_config(c, plan, data_path, prov, plan_path, config_source)
                for c, prov in zip(configs, provs)]
    name = job_name(name, "train")
    rd = _program_run_dir(run_dir, name)
    name = run_name(name, rd)
    files: dict[str, Any] = {}
    if plan_text is not None:
        files["plan.toml"] = plan_text
    if len(rendered) == 1:
        files["config.toml"] = lambda pm, d=rendered[0]: config_for_job(d, pm)
    else:
        for i, data in enumerate(rendered):
            files[f"configs/{i}.toml"] = lambda pm, d=data: config_for_job(d, pm)
    reads = {f"{s}.{k}": v for s, k in CONFIG_PATHS for v in [(rendered[0].get(s) or {}).get(k)]
             if isinstance(v, str) and v.startswith("/")}
    req = JobRequest(kind="train", backend=launcher, run_dir=rd, name=name, paths=reads,
                     program=train_program(rd), partition=partition,
                     nodes=nodes, gpus_per_node=gpus_per_node, time=time_limit,
                     after=list(after), array=len(rendered) if len(rendered) > 1 else 0,
                     array_parallel=array_parallel, debug_env=debug_env, command=command,
                     **_settings(settings))
    resolved = {"train": [p.to_data() for p in provs], "given": (settings or {}).get("given"),
                "plan": f"plan {plan_path}" if plan_path else None}
    return prepare(req, site, plan, files, resolved)


def prepare_eval_job(*, checkpoint: str, suite: Optional[str] = None, output: Optional[str] = None,
                     tasks: Optional[str] = None, launcher: str = "local", site: Optional[str] = None,
                     time_limit: Optional[str] = None, name: Optional[str] = None,
                     after: Sequence[str] = (), partition: Optional[str] = None,
                     gpus_per_node: Optional[int] = None, run_dir: Optional[str] = None,
                     command: str = "", settings: Optional[dict[str, Any]] = None,
                     limit: Optional[int] = None, batch_size: Optional[int] = None) -> tuple[RunDir, Any]:
    """An evaluation job (`llmctl eval run` in the allocation), e.g. after a train job."""
    name = job_name(name, "eval")
    rd = _program_run_dir(run_dir, name)
    name = run_name(name, rd)
    program = eval_program(rd, checkpoint, suite, output, tasks, limit, batch_size)
    req = JobRequest(kind="eval", backend=launcher, run_dir=rd, name=name, program=program,
                     partition=partition, gpus_per_node=gpus_per_node, time=time_limit,
                     after=list(after), command=command, **_settings(settings))
    table = _program_table([("checkpoint", str(Path(checkpoint).absolute()), "--checkpoint", None),
                            ("suite", suite and str(Path(suite).absolute()), "--suite", "the built-in suite"),
                            ("output", program[program.index("--output") + 1], "--output" if output else None,
                             None),
                            ("tasks", tasks, "--tasks", "every task of the suite"),
                            ("limit", limit, "--limit", "every document"),
                            ("batch_size", batch_size, "--batch-size", "the suite's batch size")])
    return prepare(req, site, resolved={"program": table, "given": (settings or {}).get("given")})


def _program_table(rows: list[tuple[str, Any, Optional[str], Optional[str]]]) -> dict[str, Any]:
    """(key, value, flag that gave it or None, what the default means) -> provenance entries."""
    from llmctl.jobs.provenance import DEFAULT

    out = {}
    for key, value, flag, meaning in rows:
        if value is not None and flag:
            out[key] = {"value": value, "source": f"flag {flag}"}
        else:
            out[key] = {"value": value if value is not None else meaning, "source": DEFAULT}
    return out


def prepare_serve_job(*, kind: str, artifact: str, input_path: Optional[str] = None,
                      output_path: Optional[str] = None, port: int = 8080,
                      config_path: Optional[str] = None, launcher: str = "local",
                      site: Optional[str] = None, time_limit: Optional[str] = None,
                      name: Optional[str] = None, after: Sequence[str] = (),
                      partition: Optional[str] = None, gpus_per_node: Optional[int] = None,
                      nodes: Optional[int] = None, mpi_mode: Optional[str] = None,
                      run_dir: Optional[str] = None, command: str = "",
                      settings: Optional[dict[str, Any]] = None) -> tuple[RunDir, Any]:
    """A batch-inference job (resumable, requeued on preemption) or a persistent server
    (on several MPI ranks with `nodes` x `gpus_per_node` > 1, in `mpi_mode` tp or dp)."""
    if kind not in ("serve-batch", "serve-persistent"):
        raise LlmctlError(f"unknown serve job kind {kind!r}; expected serve-batch or serve-persistent")
    name = job_name(name, kind)
    rd = _program_run_dir(run_dir, name)
    name = run_name(name, rd)
    if kind != "serve-persistent" and ((nodes or 1) > 1 or mpi_mode):
        raise LlmctlError("--nodes and --mpi-mode are for a persistent server; a batch job answers its "
                          "file in one process")
    program = serve_program(kind, rd, artifact, input_path, output_path, port, config_path, mpi_mode)
    req = JobRequest(kind=kind, backend=launcher, run_dir=rd, name=name, program=program,
                     partition=partition, gpus_per_node=gpus_per_node, nodes=nodes, time=time_limit,
                     after=list(after), command=command, **_settings(settings))
    given = (settings or {}).get("given") or {}
    table = _program_table([("artifact", str(Path(artifact).absolute()), "--artifact", None),
                            ("config", config_path and str(Path(config_path).absolute()), "--config",
                             "built-in serve defaults")]
                           + ([("input", str(Path(input_path).absolute()), "--input", None),
                               ("output", program[program.index("--output") + 1],
                                "--output" if output_path else None, None)] if kind == "serve-batch" else
                              [("port", port, None if "port" in given else "--port", None)]))
    return prepare(req, site, resolved={"program": table, "given": given})


def submit_run(run_dir: str | Path, allow_edited: bool = False) -> tuple[RunDir, str]:
    """Submit a run folder's script exactly as it is on disk; returns (RunDir, job id).

    A script edited since rendering is refused unless `allow_edited`: the reviewed
    script is the one that runs, or the user says otherwise.
    """
    from llmctl.schedulers import get_scheduler
    from llmctl.schedulers.base import record_submission

    run = RunDir(run_dir).require()
    spec = run.load_spec()
    if run.submission():
        raise LlmctlError(f"{run.path}: already submitted as job {run.submission().get('job_id')}",
                          hint="render a new run folder to run it again")
    edited = run.edited_files()
    if edited and not allow_edited:
        raise LlmctlError(f"{run.path}: edited since rendering: {', '.join(edited)}",
                          hint="review the change, then pass --allow-edited to submit it as it is")
    from llmctl.jobs.preflight import check

    sched = get_scheduler(spec.backend)
    script = run.script(spec.backend)
    check(run, spec)  # nothing is queued unless the job could run
    job_id = sched.submit(run, spec)

    run.write_json(run.submission_file, {
        "backend": spec.backend, "job_id": job_id,
        "submit_command": sched.submit_argv(script), "script_sha256": sha256_file(script),
        "edited": edited, "submitted": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    record_submission(run.path, spec.backend, job_id, spec.name)
    return run, job_id
