# Create or reuse .venv in the repo root and install the project into it (idempotent).
# Sourced by the README's two commands, and by a user's shell (`source scripts/venv.sh`) to
# put `caeadmm` on the PATH. The CPU wheel of torch is installed first, pinned, so that pip
# never resolves the unpinned `torch` dependency to a multi-GB CUDA build.
# An activated virtualenv with Ray in it ($VIRTUAL_ENV) is used as it is, nothing installed.
#
# Being sourced, it leaves the caller's shell as it found it but for PATH: no `set` options
# (an interactive shell must not close on the next failing command), no variables, no
# functions. A failed step returns non-zero (which stops a caller running under `set -e`).

_caeadmm_venv() {
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/ray" ]; then
        export PATH="$VIRTUAL_ENV/bin:$PATH"
        return 0
    fi
    local root venv py stamp
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || return 1
    venv="$root/.venv"
    py="${PYTHON:-python3}"
    if [ ! -x "$venv/bin/python" ]; then
        echo "[setup] creating $venv"
        "$py" -m venv "$venv" || { echo "[setup] error: $py -m venv $venv failed" >&2; return 1; }
    fi
    stamp="$venv/.caeadmm-installed"
    if [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ]; then
        echo "[setup] installing caeadmm and its dependencies into .venv (first run: about a minute)"
        { "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null \
            && "$venv/bin/python" -m pip install -q "torch==2.13.0" \
            && "$venv/bin/python" -m pip install -q -e "$root[dev]" \
            && touch "$stamp"; } \
            || { echo "[setup] error: installing into $venv failed (see pip's output above)" >&2
                 return 1; }
    fi
    export PATH="$venv/bin:$PATH"
}

if _caeadmm_venv; then
    unset -f _caeadmm_venv
    return 0 2>/dev/null || exit 0
fi
unset -f _caeadmm_venv
return 1 2>/dev/null || exit 1
