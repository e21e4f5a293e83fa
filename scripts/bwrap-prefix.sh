#!/usr/bin/env bash
# Build the "image" of a bubblewrap site: a folder that holds llmctl and its Python,
# made to be mounted read-only at /opt/llmctl inside the sandbox (site-configs/local-bwrap.toml).
#
#   bash scripts/bwrap-prefix.sh DEST [VENV]     # VENV: where its packages come from (default .venv)
#
# DEST becomes a virtual environment created *inside* a sandbox in which DEST is
# /opt/llmctl, so every path it records (pyvenv.cfg, bin/python, script shebangs) is
# the one the job sees. Its interpreter is the system's (/usr/bin/python3, which every
# sandbox has read-only); a venv of the project's own base Python would record a
# path outside the sandbox (pyvenv.cfg `home`, libpython's RUNPATH). Its packages are
# VENV's site-packages, hard-linked (copied across filesystems), so torch is not
# installed again; llmctl is then installed from a wheel of this checkout, not
# editable (an editable install points at the source, which the sandbox does not have).
# Nothing in DEST refers to a host path: in the sandbox it needs only /usr.
#
# VENV's Python must have the system Python's major.minor version (the packages'
# compiled extensions are built for it). Needs bwrap (apt-get install bubblewrap).
set -euo pipefail

die() { printf 'bwrap-prefix: %s\n' "$*" >&2; exit 1; }

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: bash scripts/bwrap-prefix.sh DEST [VENV]"
REPO=$(cd "$(dirname "$0")/.." && pwd)
DEST=$1
VENV=${2:-$REPO/.venv}
INSIDE=/opt/llmctl            # llmctl.config.site.BWRAP_IMAGE_DIR
SYSPY=/usr/bin/python3

command -v bwrap >/dev/null || die "bwrap is not installed (apt-get install bubblewrap)"
[ -x "$SYSPY" ] || die "$SYSPY is missing: the sandbox's interpreter is the system's (apt-get install python3-venv)"
[ -x "$VENV/bin/python" ] || die "$VENV/bin/python is missing (make venv)"
ver() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])'; }
want=$(ver "$VENV/bin/python")
have=$(ver "$SYSPY")
[ "$want" = "$have" ] || die "$VENV is Python $want but $SYSPY is $have: its compiled packages would not load"
case "$DEST" in /*) ;; *) DEST=$(pwd)/$DEST ;; esac
[ ! -e "$DEST" ] || [ -z "$(ls -A "$DEST")" ] || die "$DEST exists and is not empty"
mkdir -p "$DEST"

# The sandbox the jobs get, with DEST writable at /opt/llmctl (and $2 read-only at /src).
sandbox() {
  local src=$1; shift
  bwrap --die-with-parent --ro-bind /usr /usr --symlink usr/lib /lib --symlink usr/lib64 /lib64 \
    --symlink usr/bin /bin --proc /proc --dev /dev --tmpfs /tmp \
    --bind "$DEST" "$INSIDE" --ro-bind "$src" /src --chdir / \
    env -u PIP_FIND_LINKS -u PIP_CONSTRAINT -u PYTHONPATH "$@"
}

# 1. The venv, created where it will be: /opt/llmctl.
sandbox /usr "$SYSPY" -m venv --without-pip "$INSIDE"

# 2. The packages: VENV's site-packages (hard links: seconds, no new disk), less llmctl itself.
src_sp=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
dest_sp="$DEST/lib/python$want/site-packages"
cp -al "$src_sp/." "$dest_sp/" 2>/dev/null || cp -a "$src_sp/." "$dest_sp/"
rm -rf "$dest_sp"/llmctl "$dest_sp"/llmctl-*.dist-info "$dest_sp"/_editable_impl_llmctl*.pth \
       "$dest_sp"/__editable__*llmctl*

# 3. llmctl from a wheel of this checkout (templates, solvers and site-configs inside it).
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
"$VENV/bin/python" -m pip wheel -q --no-deps -w "$wheels" "$REPO"
whl=$(cd "$wheels" && ls llmctl-*.whl)
sandbox "$wheels" "$INSIDE/bin/python" -m pip install -q --no-deps --no-index "/src/$whl"

# 4. It runs with nothing but /usr and itself.
sandbox /usr "$INSIDE/bin/python" -c 'import llmctl, torch, sys; print("llmctl", llmctl.__version__, "torch", torch.__version__, "in", sys.prefix)'
