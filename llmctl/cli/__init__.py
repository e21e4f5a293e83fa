"""The `llmctl` command line: `llmctl <group> <verb>`.

The CLI modules are thin (parse, call a library function, print) and import only
click at module level; each command imports what it needs inside its body, so
`llmctl --help` never pays for pydantic, torch or deepspeed.
"""

from __future__ import annotations

import os
import sys

import click

from llmctl import __version__
from llmctl.cli import data, doctor, env, eval as eval_, examples, export, hw, init, job, plan, schema, serve, site, train
from llmctl.errors import LlmctlError

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", "-V", prog_name="llmctl", message="%(prog)s %(version)s")
@click.option("--debug", is_flag=True, envvar="LLMCTL_DEBUG",
              help="Show full tracebacks (also LLMCTL_DEBUG=1).")
def cli(debug: bool) -> None:
    """llmctl: from "this model, this cluster" to trained, evaluated and served.

    \b
    Typical flow on a login node:
      llmctl init scaffold --template llama --size tiny --name demo
      llmctl hw probe --emit configs/hw/local.toml
      llmctl plan compute --model configs/models/llama-tiny.json
          --hardware configs/hw/local.toml --train configs/train.toml --out plans/local.toml
      llmctl data prepare --config configs/data/example.toml
      llmctl train launch --plan plans/local.toml --config configs/train.toml
          --data configs/data/example.toml --launcher local

    Shell completion: eval "$(llmctl completion bash)" (or zsh, fish).
    """


for _group in (init.group, hw.group, plan.group, data.group, train.group, eval_.group,
               export.command, serve.group, job.group, site.group, env.command,
               schema.command, doctor.command, env.completion):
    cli.add_command(_group)
examples.apply(cli)  # each command's "Examples:" and --json shape (llmctl/cli/examples.py)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit code (2 for anything the user can fix)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if argv is None:  # run as the program: config field docs only for `schema` (llmctl.config.base)
        os.environ.setdefault("LLMCTL_FIELD_DOCS", "0")
    debug = "--debug" in args or os.environ.get("LLMCTL_DEBUG", "") not in ("", "0")
    try:
        rv = cli.main(args=args, prog_name="llmctl", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except LlmctlError as e:
        if debug:
            import traceback

            traceback.print_exc()
        click.echo(e.render(), err=True)
        return e.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:
        # `llmctl ... | head`: the reader went away; nothing to report.
        sys.stderr.close()
        return 0
    return rv if isinstance(rv, int) else 0
