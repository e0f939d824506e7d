# Sourced by .ci/run (and by a developer who wants CI's exact artifacts in their target
# directory): clippy-driver compiles the workspace's own crates, linting them with
# `-D warnings` while it builds them, so no separate clippy pass compiles anything again.
# The same variables must be set for every cargo command that should reuse those artifacts
# (they are part of the workspace crates' fingerprints; dependencies are unaffected).
RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver || rustup which clippy-driver)"
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
