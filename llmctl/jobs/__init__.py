"""Jobs: what to run and where, independent of any scheduler.

`spec` is the fully resolved job (one JobSpec per run); `resolve` turns a
site-config, a plan and a job kind into one, refusing what the site does not
allow; `rundir` owns the run folder's layout; `launch` is the library entry point
the CLI (train, eval, serve) calls; `golden` keeps `jobs/` current.
"""
